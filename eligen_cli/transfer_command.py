"""`eligen transfer`: move an entity of a source image into a target image (In-Context LoRA two-panel inpainting)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from .common import DeviceOpt, DtypeOpt, OffloadOpt, OverwriteOpt, QuantizeOpt, err, png_output, user_errors
from .terminal import step_progress


def _panel(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, e.g. 736x1024, got {value!r}", param_hint="--panel")
    return int(parts[0]), int(parts[1])


def transfer(
    source_image: Annotated[Path, typer.Argument(
        metavar="SOURCE", help="The image holding the entity (PNG, JPEG...).")],
    layout: Annotated[Path, typer.Argument(
        metavar="LAYOUT.yaml", help="Transfer file: an edits file with `target:` (the image to place the entity in) "
        "whose entities are placed on the target.")],
    output: Annotated[Path | None, png_output(
        "Output PNG, the target panel [default: <source stem>-transfer.png, -<seed> added for several seeds].")] = None,
    panel: Annotated[str | None, typer.Option(
        metavar="WxH", help="Panel size, both multiples of 16 [default: the target's aspect, at most 512x1024 px in "
        "area].")] = None,
    in_context_lora: Annotated[str, typer.Option(
        metavar="FILE", help="In-Context LoRA stacked on the layout's LoRAs: a local .safetensors or "
        "hub-repo-id/path/in/repo.safetensors.")] = "ali-vilab/In-Context-LoRA/visual-identity-design.safetensors",
    in_context_scale: Annotated[float, typer.Option(metavar="SCALE", help="Scale of the In-Context LoRA.")] = 1.0,
    keep_panels: Annotated[bool, typer.Option(
        "--keep-panels", help="Also write <output stem>.panels.png, both panels side by side.")] = False,
    fusion: Annotated[Literal["exact", "paper"] | None, typer.Option(
        help="exact: the source panel and the target outside the regions are kept; paper: the reference's fusion "
        "[default: the file's, else exact].")] = None,
    seed: Annotated[list[int] | None, typer.Option(metavar="N", help="Seed; repeat for one image per seed.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps [default: the file's, else the model's].")] = None,
    cfg: Annotated[float | None, typer.Option(metavar="SCALE", help="True CFG scale.")] = None,
    model: Annotated[str | None, typer.Option(metavar="MODEL", help="FLUX model (overrides the file).")] = None,
    batch_cfg: Annotated[bool, typer.Option("--batch-cfg", help="Run both CFG branches in one batched pass.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = "none",
    quantize: QuantizeOpt = "none",
    overwrite: OverwriteOpt = False,
) -> None:
    """Move an entity from a source image into the regions of a target image (paper C.2).

    A canvas twice as wide as a panel holds the source on the left and the target on the right; the regions are
    repainted on the right panel with In-Context LoRA stacked on the EliGen LoRA. The prompt should describe both
    panels in In-Context LoRA's form ("The two-panel image showcases ..., with the left panel showing ...; [LEFT]
    while the right panel ..."); docs/styled-entities.md.

    \b
    Examples:
      eligen transfer logo.png tote.yaml --keep-panels
      eligen transfer logo.png tote.yaml --panel 736x1024 --seed 0 --seed 1
    """
    from eligen.pipeline.inpaint_canvas import place
    from eligen.pipeline.layout import LayoutError, LoraSpec
    from eligen.pipeline.memory_estimate import check_memory
    from eligen.pipeline.model_info import model_family, scale_factor
    from eligen.pipeline.outputs import check_writable, save_png
    from eligen.pipeline.regions import PATCH, entity_masks
    from eligen.pipeline.transfer_canvas import panel_size, read_transfer, transfer_canvas

    from .sources import _resolve, cli_overrides, read_source_image, seeded_paths

    requested = _panel(panel)
    with user_errors():
        overrides = cli_overrides({"seed": seed or None, "steps": steps, "cfg": cfg, "fusion": fusion,
                                    "model": model})
        source, sha256 = read_source_image(source_image)
        spec, target = read_transfer(layout, overrides)
        spec = _resolve(spec, overrides, layout.parent, str(layout))
        if model_family(spec.model).name != "flux":
            raise LayoutError(str(layout), "model", f"expected a FLUX model: In-Context LoRA is a FLUX LoRA, "
                              f"{spec.model} is a {model_family(spec.model).name} model")
        masks = entity_masks(spec, layout.parent, str(layout), same_size=True)
        factor = scale_factor(spec.model)
        try:
            size = panel_size(target.size, factor * PATCH, requested)
        except ValueError as exc:
            raise LayoutError("--panel", "--panel", str(exc)) from None
        canvas = transfer_canvas(spec, masks, source, target, size)
        placed = place(canvas.edits, canvas.masks, canvas.two_panel.size, factor, str(layout))  # regions cover tokens
        check_memory(placed.layout, device, str(layout))
        seeds = spec.seeds or [secrets.randbelow(2**32)]
        outs = seeded_paths(output or Path(f"{source_image.stem}-transfer.png"), seeds)
        panels = [p.with_name(f"{p.stem}.panels.png") for p in outs] if keep_panels else []
        check_writable(outs + panels, overwrite)
        local = Path(in_context_lora)
        in_context = LoraSpec(path=str(local.resolve()) if local.is_file() else in_context_lora,
                              scale=in_context_scale)

        from eligen.pipeline.devices import use_threads
        from eligen.pipeline.generate import EligenPipeline
        from eligen.pipeline.render import SourceImage, TransferJob, prepare_render

        from .terminal import status

        with status(f"loading {spec.model}"):
            pipe = EligenPipeline.from_pretrained(spec.model, transformer=spec.transformer, device=device, dtype=dtype,
                                                  offload=offload, quantize=quantize)
        use_threads(None, pipe.device, pipe.transformer)  # one thread for a small model on the CPU
        job = TransferJob(canvas, in_context, SourceImage(source, source_image.name, sha256))
        prepared = prepare_render(pipe, spec, base_dir=layout.parent, source=str(layout), transfer=job)
        for seed_value, out, panels_out in zip(seeds, outs, panels or [None] * len(outs), strict=True):
            started = time.monotonic()
            with step_progress(f"{source_image.name} seed {seed_value}", prepared.sampled.steps) as on_step:
                result = prepared.image(seed_value, on_step, batch_cfg)
            save_png(result.image, out, result.metadata)
            err.print(f"wrote {out} ({result.image.size[0]}x{result.image.size[1]}, {prepared.sampled.steps} steps, "
                      f"{time.monotonic() - started:.1f} s)")
            if panels_out is not None and result.panels is not None:
                save_png(result.panels, panels_out, result.metadata)
                err.print(f"wrote {panels_out}")


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer)

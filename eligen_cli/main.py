"""The `eligen` command line: parse, validate, call the pipeline, report, write. No model math here.

Heavy modules (torch, diffusers) are imported inside the commands that need them, so `eligen --help`
and `eligen preview` start fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from eligen import __version__
from eligen.pipeline.outputs import check_writable, save_png

from . import collector
from .agent_commands import register as register_agent_commands
from .common import (
    DeviceOpt,
    DtypeOpt,
    EntityTokensOpt,
    OffloadOpt,
    OverwriteOpt,
    QuantizeOpt,
    ThreadsOpt,
    TransformerOpt,
    entity_tokens_value,
    err,
    fail,
    png_output,
    user_errors,
)
from .eval_command import register as register_eval_command
from .help_format import tidy_help
from .ip_adapter_options import IPAdapterOpt, IPEncoderOpt, IPImageOpt, IPScaleOpt, ip_adapter_override
from .lora_command import register as register_lora_command
from .shapes_commands import register as register_shapes_commands
from .sources import LayoutSource, load_edits, load_source
from .studio.command import register as register_studio_command
from .terminal import library_output, status, step_progress
from .train_command import register as register_train_command
from .transfer_command import register as register_transfer_command

if TYPE_CHECKING:
    from eligen.pipeline.generate import EligenPipeline

app = typer.Typer(
    help="Entity-level controlled image generation (EliGen) on FLUX and Qwen-Image: a global prompt plus entities, "
    "each a prompt with a region, rendered with every entity in its place.\n\n"
    "\b\nStart here (offline, seconds on a CPU):\n  eligen generate layouts/shapes.yaml --preview\n\n"
    "Run `eligen COMMAND --help` for a command's options and examples; docs/getting-started.md has more.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options shared by the commands that render.
SeedOpt = Annotated[list[int] | None, typer.Option(metavar="N", help="Seed; repeat for one image per seed.")]
StepsOpt = Annotated[int | None, typer.Option(
    help="Sampling steps [default: the layout's, else the model's: 50 for FLUX.1-dev, 40 for Qwen-Image, 16 for "
    "shapes].")]
CfgOpt = Annotated[float | None, typer.Option(
    metavar="SCALE", help="True CFG scale, 1 turns it off [default: the layout's, else the model's: 3.0 for FLUX, "
    "4.0 for Qwen-Image].")]
GuidanceOpt = Annotated[float | None, typer.Option(
    metavar="SCALE", help="FLUX embedded guidance [default: the layout's, else 3.5].")]
ScheduleOpt = Annotated[Literal["scheduler", "shift3", "reference", "flux", "diffsynth"] | None, typer.Option(
    help="Sigma schedule: scheduler (the model's scheduler config, as diffusers), shift3 (a static shift of 3), "
    "reference (the reference implementation's: shift3 for FLUX, scheduler for Qwen-Image); flux and diffsynth are "
    "older names of scheduler and reference [default: the layout's, else scheduler].")]
ModelOpt = Annotated[str | None, typer.Option(
    metavar="MODEL", help="Diffusers FLUX or Qwen-Image folder, hub id (black-forest-labs/FLUX.1-dev, Qwen/Qwen-Image) "
    "or built-in name: shapes, shapes-base (overrides the file).")]
LoraOpt = Annotated[list[str] | None, typer.Option(
    "--lora", metavar="FILE", help="LoRA: a local .safetensors or hub-repo-id/path/in/repo.safetensors; repeat to "
    "stack (replaces the file's `loras`).")]
LoraScaleOpt = Annotated[list[float] | None, typer.Option(
    "--lora-scale", metavar="SCALE", help="Scale of each --lora, paired in order [default: 1.0].")]
FuseOpt = Annotated[bool, typer.Option("--fuse-loras", help="Merge LoRAs into the weights (faster steps).")]
EntityLoraOpt = Annotated[list[str] | None, typer.Option(
    "--entity-lora", metavar="N=FILE[:SCALE]", help="A LoRA on entity N only (0 = the first), added to the entity's "
    "`loras`; FILE as for --lora, SCALE defaults to 1.0; repeat for more (docs/entity-loras.md).")]
PreviewOpt = Annotated[bool, typer.Option("--preview", help="Also write <output stem>.preview.png.")]
AttentionOpt = Annotated[Literal["auto", "dense", "flex", "split"] | None, typer.Option(
    help="How the regional mask runs: auto (split where it is faster, else dense), dense (exact to the reference), "
    "flex or split (sparse, same result within float tolerance) [default: the layout's, else auto].")]
BatchCfgOpt = Annotated[bool, typer.Option("--batch-cfg", help="Run both CFG branches in one batched pass.")]
AttentionMapsOpt = Annotated[bool, typer.Option(
    "--attention-maps", help="Also write <output stem>.attention.png: where each entity prompt looks, at a few steps "
    "(one extra sampling pass).")]
AttentionStepsOpt = Annotated[list[int] | None, typer.Option(
    "--attention-step", help="A step shown by --attention-maps; repeat [default: 1/4, 1/2, 3/4 and the last].")]
AttentionBlockOpt = Annotated[str, typer.Option(
    "--attention-block", help="The block --attention-maps reads: dual:N or single:N, N negative from the end.")]


def _lora_overrides(loras: list[str] | None, scales: list[float] | None) -> list[dict[str, Any]] | None:
    """`--lora` / `--lora-scale` as the layout's `loras` list (local files resolved against the current folder)."""
    if not loras:
        if scales:
            raise typer.BadParameter("given without --lora", param_hint="--lora-scale")
        return None
    scales = scales or []
    if len(scales) > len(loras):
        raise typer.BadParameter(f"{len(scales)} scales for {len(loras)} LoRAs", param_hint="--lora-scale")
    scales = scales + [1.0] * (len(loras) - len(scales))
    return [{"path": str(Path(spec).resolve()) if Path(spec).is_file() else spec, "scale": scale}
            for spec, scale in zip(loras, scales, strict=True)]


def _entity_lora_overrides(values: list[str] | None) -> dict[int, list[dict[str, Any]]] | None:
    """`--entity-lora N=FILE[:SCALE]` as {entity index: [LoRA spec, ...]} (local files resolved against the current
    folder)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for value in values or []:
        index, equals, rest = value.partition("=")
        if not equals or not index.strip().isdigit() or not rest:
            raise typer.BadParameter(f"expected N=FILE[:SCALE] with N an entity index, got {value!r}",
                                     param_hint="--entity-lora")
        spec, scale = rest, 1.0
        if ":" in rest:
            spec, _, text = rest.rpartition(":")
            try:
                scale = float(text)
            except ValueError:
                raise typer.BadParameter(f"expected a number after the last ':' (the scale), got {text!r} in "
                                         f"{value!r}", param_hint="--entity-lora") from None
        path = str(Path(spec).resolve()) if Path(spec).is_file() else spec
        found.setdefault(int(index), []).append({"path": path, "scale": scale})
    return found or None


def _version(value: bool) -> None:
    if value:
        print(f"eligen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the libraries' warnings, logs and loading bars (hidden by default).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Entity-level controlled image generation (EliGen) on FLUX and Qwen-Image."""
    ctx.with_resource(library_output(verbose))


def _preview_image(src: LayoutSource, scale_factor: int) -> tuple[list[Any], Any]:
    """Rasterise and validate the regions of a layout, warn of what the model will not draw as written, and
    draw its preview."""
    from eligen.pipeline.layout_warnings import check_layout
    from eligen.pipeline.preview import draw_preview
    from eligen.pipeline.regions import check_canvas, entity_masks, token_masks

    check_canvas(src.layout, scale_factor, src.source)
    masks = entity_masks(src.layout, src.base_dir, src.source)
    tokens = token_masks(masks, scale_factor, src.layout, src.source)
    check_layout(src.layout, masks, scale_factor, src.source, tokens)
    return masks, draw_preview(src.layout, masks, tokens, scale_factor * 2)


def _preview_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}.preview.png")


def _wrote(path: Path, size: tuple[int, int], steps: int, started: float) -> None:
    """The one line per finished image."""
    err.print(f"wrote {path} ({size[0]}x{size[1]}, {steps} steps, {time.monotonic() - started:.1f} s)")


class _Models:
    """Loads each distinct model once per command."""

    def __init__(self, device: str | None, dtype: str | None, offload: str, quantize: str, fuse_loras: bool,
                 threads: int | None = None) -> None:
        self.options = {"device": device, "dtype": dtype, "offload": offload, "quantize": quantize,
                        "fuse_loras": fuse_loras}
        self.threads = threads
        self.loaded: dict[tuple[str, str | None, str | None], EligenPipeline] = {}

    def __call__(self, model: str, loras: object = None, transformer: str | None = None) -> EligenPipeline:
        """The loaded model (with `transformer` replacing its own); with fused LoRAs, one copy per distinct LoRA
        set (`loras`)."""
        key = (model, transformer, repr(loras) if self.options["fuse_loras"] else None)
        if key not in self.loaded:
            with status(f"loading {model}" + (f" with transformer {transformer}" if transformer else "")):
                with collector.imports():  # the code the model runs on: torch, diffusers, transformers
                    from eligen.pipeline.families.loading import family_class
                    from eligen.pipeline.generate import EligenPipeline

                    family_class(model)
                self.loaded[key] = EligenPipeline.from_pretrained(model, transformer=transformer, **self.options)
            from eligen.pipeline.devices import use_threads

            use_threads(self.threads, self.loaded[key].device, self.loaded[key].transformer)
        return self.loaded[key]


@app.command()
def preview(
    layout: Annotated[Path, typer.Argument(
        metavar="LAYOUT.yaml", help="Layout YAML file (or a PNG written by eligen).")],
    output: Annotated[Path | None, png_output(
        "Preview PNG [default: <stem>.preview.png].")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Draw a layout's regions and the token cells the model will see, without loading a model.

    Also checks the layout against its model (words it does not know, too many entities, regions smaller than
    a token) and warns.

    \b
    Examples:
      eligen preview layouts/shapes.yaml                 # writes shapes.preview.png
      eligen preview layouts/desk.yaml -o desk-regions.png
      eligen preview image.png                           # the layout embedded in a PNG eligen wrote
    """
    from eligen.pipeline.model_info import scale_factor

    with user_errors():
        src = load_source(layout, {})
        target = output or Path(f"{layout.stem}.preview.png")
        check_writable([target], overwrite)
        _, image = _preview_image(src, scale_factor(src.layout.model))
        save_png(image, target)
    err.print(f"wrote {target}")


@app.command()
def generate(
    layouts: Annotated[list[Path], typer.Argument(
        metavar="LAYOUT.yaml", help="Layout YAML files, or PNGs written by eligen to re-run.")],
    output: Annotated[Path | None, png_output(
        "Output PNG (one layout only) [default: <layout stem>.png, <stem>-<seed>.png for several seeds].")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    cfg: CfgOpt = None,
    guidance: GuidanceOpt = None,
    schedule: ScheduleOpt = None,
    entity_tokens: EntityTokensOpt = None,
    attention: AttentionOpt = None,
    batch_cfg: BatchCfgOpt = False,
    model: ModelOpt = None,
    transformer: TransformerOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = "none",
    quantize: QuantizeOpt = "none",
    lora: LoraOpt = None,
    lora_scale: LoraScaleOpt = None,
    entity_lora: EntityLoraOpt = None,
    fuse_loras: FuseOpt = False,
    ip_adapter: IPAdapterOpt = None,
    ip_image: IPImageOpt = None,
    ip_scale: IPScaleOpt = None,
    ip_encoder: IPEncoderOpt = None,
    preview: PreviewOpt = False,
    attention_maps: AttentionMapsOpt = False,
    attention_step: AttentionStepsOpt = None,
    attention_block: AttentionBlockOpt = "dual:-1",
    overwrite: OverwriteOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and write the preview only.")] = False,
) -> None:
    """Render layout files to PNGs with entity-level regional attention.

    What a layout leaves out (size, steps, cfg, negative prompt) comes from its model: 1024x1024, 50 steps, CFG 3
    for FLUX.1-dev; 40 steps, CFG 4 and the negative prompt " " for Qwen-Image; 128x128 and 12 steps for the
    built-in shapes model. Options given here win over both.

    \b
    Examples:
      eligen generate layouts/shapes.yaml --preview      # offline, seconds on a CPU
      eligen generate layouts/shapes.yaml --seed 1 --seed 2 --steps 32
      eligen generate layouts/desk.yaml                  # FLUX.1-dev with the EliGen LoRA (GPU)
      eligen generate layouts/*.yaml --dry-run           # validate all, write previews only
      eligen generate shapes.png -o again.png            # re-run a PNG eligen wrote
    """
    from eligen.pipeline.memory_estimate import check_memory
    from eligen.pipeline.model_info import scale_factor

    if output is not None and len(layouts) > 1:
        raise typer.BadParameter("names one file; with several layouts leave it out", param_hint="-o/--output")
    maps = _attention_request(attention_maps, attention_step, attention_block)
    overrides = {"seed": seed or None, "steps": steps, "cfg": cfg, "guidance": guidance, "schedule": schedule,
                 "entity_tokens": entity_tokens_value(entity_tokens), "attention": attention,
                 "model": model, "transformer": transformer, "loras": _lora_overrides(lora, lora_scale),
                 "entity_loras": _entity_lora_overrides(entity_lora),
                 "ip_adapter": ip_adapter_override(ip_adapter, ip_image, ip_scale, ip_encoder)}
    with user_errors():
        jobs = []
        for path in layouts:
            src = load_source(path, overrides)
            masks, preview_image = _preview_image(src, scale_factor(src.layout.model))
            _check_references(src.layout, src.base_dir, src.source)
            with collector.imports():  # the first check imports torch
                check_memory(src.layout, device, src.source, refuse=not dry_run)  # before anything is loaded
            jobs.append((src, masks, preview_image, src.output_paths(output)))
        targets = [p for *_, outs in jobs for p in outs]
        previews = [_preview_path(p) for p in targets] if preview or dry_run else []
        grids = [_attention_path(p) for p in targets] if maps and not dry_run else []
        check_writable(targets * (not dry_run) + previews + grids, overwrite)
        for *_, image, outs in jobs:
            for out in outs if preview or dry_run else []:
                save_png(image, _preview_path(out))
                err.print(f"wrote {_preview_path(out)}")
        if dry_run:
            err.print(f"{len(jobs)} layout(s) valid; dry run, no image generated")
            return
        models = _Models(device, dtype, offload, quantize, fuse_loras, threads)
        for src, _, _, outs in jobs:
            _render(models(src.layout.model, src.layout.loras, src.layout.transformer), src, outs, batch_cfg, maps)


def _check_references(layout: Any, base_dir: Path, source: str) -> None:
    """The layout's adapter file and reference images exist (before any model is loaded)."""
    if layout.ip_adapter is not None:
        from eligen.pipeline.references import check_references

        check_references(layout, base_dir, source)


def _attention_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}.attention.png")


def _attention_request(wanted: bool, steps: list[int] | None, block: str) -> tuple[list[int] | None, Any] | None:
    """(steps or None for the default ones, the block) of `--attention-maps`, or None when not asked."""
    if not wanted:
        if steps:
            raise typer.BadParameter("given without --attention-maps", param_hint="--attention-step")
        return None
    from eligen.pipeline.attention_maps import Block  # imports torch and diffusers: only when asked for

    try:
        return steps or None, Block.parse(block)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--attention-block") from None


def _render(pipe: EligenPipeline, src: LayoutSource, outs: list[Path], batch_cfg: bool,
            maps: tuple[list[int] | None, Any] | None = None) -> None:
    """Render every seed of one layout, writing each PNG with the resolved layout embedded (and, with `maps`, its
    attention maps beside it)."""
    from eligen.pipeline.render import prepare_render

    prepared = prepare_render(pipe, src.layout, base_dir=src.base_dir, source=src.source)
    layout = prepared.layout
    for seed, out in zip(src.seeds, outs, strict=True):
        started = time.monotonic()
        with step_progress(f"{src.path.name} seed {seed}", layout.steps) as on_step:
            result = prepared.image(seed, on_step, batch_cfg)
        save_png(result.image, out, result.metadata)
        _wrote(out, layout.size, layout.steps, started)
        if maps is None:
            continue
        from eligen.pipeline.attention_maps import attention_maps, default_steps, draw_attention_grid

        steps, block = maps
        try:
            with step_progress(f"attention maps, seed {seed}", layout.steps) as on_step:
                found = attention_maps(pipe, layout, prepared.positive, prepared.negative, seed,
                                       steps or default_steps(layout.steps), block, on_step, source=src.source)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--attention-maps") from None
        save_png(draw_attention_grid(result.image, layout, found), _attention_path(out))
        err.print(f"wrote {_attention_path(out)}")


@app.command()
def inpaint(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The image to edit (PNG, JPEG, WebP...).")],
    edits: Annotated[Path, typer.Argument(
        metavar="EDITS.yaml", help="Edits YAML: a layout whose entities are the regions to repaint.")],
    output: Annotated[Path | None, png_output(
        "Output PNG [default: <image stem>-edited.png, -<seed> added for several seeds].")] = None,
    fusion: Annotated[Literal["exact", "paper"] | None, typer.Option(
        help="exact: keep everything outside the regions; paper: the paper's fusion [default: the file's, else "
        "exact].")] = None,
    dilate: Annotated[int | None, typer.Option(
        help="Grow the regions by N px (exact) [default: the file's, else 8].")] = None,
    feather: Annotated[int | None, typer.Option(
        help="Blend over N px (exact) [default: the file's, else 8].")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    cfg: CfgOpt = None,
    guidance: GuidanceOpt = None,
    entity_tokens: EntityTokensOpt = None,
    attention: AttentionOpt = None,
    batch_cfg: BatchCfgOpt = False,
    model: ModelOpt = None,
    transformer: TransformerOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = "none",
    quantize: QuantizeOpt = "none",
    lora: LoraOpt = None,
    lora_scale: LoraScaleOpt = None,
    entity_lora: EntityLoraOpt = None,
    fuse_loras: FuseOpt = False,
    ip_adapter: IPAdapterOpt = None,
    ip_image: IPImageOpt = None,
    ip_scale: IPScaleOpt = None,
    ip_encoder: IPEncoderOpt = None,
    preview: Annotated[bool, typer.Option("--preview", help="Also write the regions over the source.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Repaint the regions of an existing image with new entities in one pass, keeping the rest.

    Every input is checked before torch is imported or a model loaded. Steps and cfg left out of the edits come
    from the model; the output PNG records the edits and the source's SHA-256 (docs/inpaint.md).

    \b
    Examples:
      eligen inpaint layouts/inpaint/photo.png layouts/inpaint/edits.yaml --preview
      eligen inpaint shapes.png recolour.yaml --seed 0 --seed 1 -o recoloured.png
    """
    from eligen.pipeline.inpaint_canvas import place
    from eligen.pipeline.layout_warnings import check_layout
    from eligen.pipeline.memory_estimate import check_memory
    from eligen.pipeline.model_info import scale_factor
    from eligen.pipeline.preview import draw_preview
    from eligen.pipeline.regions import PATCH

    overrides = {"seed": seed or None, "steps": steps, "cfg": cfg, "guidance": guidance, "model": model,
                 "transformer": transformer, "loras": _lora_overrides(lora, lora_scale), "fusion": fusion,
                 "entity_loras": _entity_lora_overrides(entity_lora),
                 "dilate": dilate, "feather": feather, "entity_tokens": entity_tokens_value(entity_tokens),
                 "attention": attention, "ip_adapter": ip_adapter_override(ip_adapter, ip_image, ip_scale, ip_encoder)}
    with user_errors():
        job = load_edits(image, edits, overrides)
        _check_references(job.edits, job.base_dir, job.source)
        outs = job.output_paths(output)
        check_writable(outs + [_preview_path(p) for p in outs] * preview, overwrite)
        factor = scale_factor(job.edits.model)
        early = place(job.edits, job.masks, job.image.size, factor, job.source)  # fail before torch is imported
        check_layout(early.layout, early.grid_masks, factor, job.source)
        with collector.imports():  # the check imports torch
            check_memory(early.layout, device, job.source)
        from eligen.pipeline.render import SourceImage, prepare_render

        models = _Models(device, dtype, offload, quantize, fuse_loras, threads)
        pipe = models(job.edits.model, transformer=job.edits.transformer)
        canvas = place(job.edits, job.masks, job.image.size, pipe.scale_factor, job.source)
        (w, h), (gw, gh) = job.image.size, canvas.layout.size
        if (w, h) != (gw, gh):
            note = ", the aspect ratio changes slightly" if abs(w / h - gw / gh) > 1e-3 else ""
            err.print(f"the model works at {gw}x{gh}; the result is resized back to {w}x{h}{note}")
        if preview:
            drawing = draw_preview(canvas.layout, canvas.grid_masks, canvas.regions, pipe.scale_factor * PATCH,
                                   background=job.image)
            for out in outs:
                save_png(drawing, _preview_path(out))
                err.print(f"wrote {_preview_path(out)}")
        prepared = prepare_render(pipe, job.edits, base_dir=job.base_dir, source=job.source,
                                  source_image=SourceImage(job.image, image.name, job.sha256))
        for seed_value, out in zip(job.seeds, outs, strict=True):
            started = time.monotonic()
            with step_progress(f"{image.name} seed {seed_value}", prepared.sampled.steps) as on_step:
                result = prepared.image(seed_value, on_step, batch_cfg)
            save_png(result.image, out, result.metadata)
            _wrote(out, result.image.size, prepared.sampled.steps, started)


@app.command("tiny-model")
def tiny_model(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder to create (must not exist or be empty).")],
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
    family: Annotated[Literal["flux", "qwen-image"], typer.Option(help="Model family.")] = "flux",
    ip_adapters: Annotated[bool, typer.Option(
        "--ip-adapters", help="Also write tiny IP-Adapters (InstantX and XLabs formats) with their image encoders "
        "into FOLDER/ip-adapters (FLUX only).")] = False,
) -> None:
    """Write a tiny random-weight FLUX or Qwen-Image model folder for trying eligen offline (its images are noise).

    \b
    Examples:
      eligen tiny-model tiny-flux
      eligen generate layouts/desk.yaml --model tiny-flux --steps 4
      eligen tiny-model tiny-qwen --family qwen-image
      eligen tiny-model tiny-flux --ip-adapters         # + tiny-flux/ip-adapters/instantx, /xlabs
    """
    if ip_adapters and family != "flux":
        raise typer.BadParameter("IP-Adapters exist for FLUX only", param_hint="--ip-adapters")
    try:
        if family == "qwen-image":
            from eligen.pipeline.shapes.tiny_qwen_image import build_tiny_qwen_image

            path = build_tiny_qwen_image(folder, seed=seed)
        else:
            from eligen.pipeline.shapes.tiny_flux import build_tiny_flux

            path = build_tiny_flux(folder, seed=seed)
            if ip_adapters:
                from eligen.pipeline.shapes.tiny_ip_adapter import build_tiny_ip_adapters

                build_tiny_ip_adapters(path / "ip-adapters", path, seed=seed)
    except FileExistsError as exc:
        raise fail(exc, 1) from None
    err.print(f"wrote {path} (random weights: its images are noise)")

register_agent_commands(app)
register_train_command(app)
register_shapes_commands(app)
register_eval_command(app)
register_studio_command(app)
register_transfer_command(app)
register_lora_command(app)
tidy_help(app)

"""`eligen data shapes` (synthetic shape scenes) and `eligen eval` (how well a model places entities).

`register(app)` adds both to a Typer app. No model math here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from eligen.pipeline.layout import LayoutError
from eligen.pipeline.outputs import check_writable, save_png

from .common import DeviceOpt, EntityTokensOpt, OverwriteOpt, entity_tokens_value, err, user_errors
from .sources import LayoutSource, load_source
from .terminal import status

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from eligen.pipeline.layout import Layout
    from eligen.pipeline.shapes.evaluation import EvalReport

data_app = typer.Typer(help="Write synthetic training datasets.", no_args_is_help=True, rich_markup_mode=None)


@data_app.command("shapes")
def data_shapes(
    output: Annotated[Path, typer.Option("-o", "--output", help="Dataset folder (metadata.jsonl, images/, masks/).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed; the dataset depends on it only.")] = 0,
    size: Annotated[int, typer.Option(min=16, help="Image side in pixels (a multiple of 16).")] = 64,
    entities: Annotated[str, typer.Option(
        metavar="N|LOW-HIGH", help="Allowed shape counts per scene (1-7: one colour each), e.g. 1-4 or 2-3; "
        "a shape that finds no free spot is left out.")] = "1-4",
    layouts: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Also write each scene as a layout YAML here (for the shapes model).")] = None,
    regions: Annotated[str, typer.Option(
        metavar="box|polygon|mask", help="Entity regions of the --layouts files: boxes, the outline of each "
        "shape as a polygon, or its exact mask PNG (in DIR/masks).")] = "box",
) -> None:
    """Scenes of flat circles, squares and triangles with captions, entity boxes and exact masks.

    \b
    Examples:
      eligen data shapes -o shapes-data --n 12000 --seed 1          # a training set
      eligen data shapes -o heldout --n 64 --seed 999 --entities 2-3 --layouts heldout-layouts
      eligen data shapes -o masked --n 64 --seed 999 --entities 2-3 --layouts masked-layouts --regions mask
      eligen generate heldout-layouts/00000.yaml                     # a scene's layout, on the shapes model
    """
    from eligen.pipeline.shapes.scenes import PALETTE, write_shapes_dataset

    low, _, high = entities.partition("-")
    most = len(PALETTE)
    if not (low.isdigit() and (high or low).isdigit()) or not 1 <= int(low) <= int(high or low) <= most:
        raise typer.BadParameter(f"expected COUNT or LOW-HIGH within 1-{most}, got {entities!r}",
                                 param_hint="--entities")
    if regions not in ("box", "polygon", "mask"):
        raise typer.BadParameter(f"expected box, polygon or mask, got {regions!r}", param_hint="--regions")
    if size % 16:
        raise typer.BadParameter(f"expected a multiple of 16, got {size}", param_hint="--size")
    if (output / "metadata.jsonl").exists():
        raise typer.BadParameter(f"{output} already holds a dataset", param_hint="-o/--output")
    counts = tuple(range(int(low), int(high or low) + 1))
    write_shapes_dataset(output, n, seed, size, counts, layouts, regions)  # type: ignore[arg-type]
    err.print(f"wrote {n} scenes to {output / 'metadata.jsonl'}" + (f" and layouts to {layouts}" if layouts else ""))


def _layout_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders as their *.yaml files, sorted."""
    found = []
    for path in paths:
        inside = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        if not inside:
            raise LayoutError(str(path), "(folder)", "expected layout files (*.yaml) in this folder, it holds none")
        found += inside
    return found


def _check_scorable(src: LayoutSource) -> None:
    """The detector scores boxes, masks and polygons (not colour-mask regions): refuse others before loading."""
    for i, entity in enumerate(src.layout.entities):
        if entity.color is not None:
            raise LayoutError(src.source, f"entities[{i}]", "expected a box, polygon or mask to score, got a color",
                              "give the region as a mask PNG")
    if not src.layout.entities:
        raise LayoutError(src.source, "entities", "expected at least one entity to score")


def _summary_table(report: EvalReport, title: str) -> Table:
    """mIoU and success rate by number of entities per layout, and in total."""
    from eligen.pipeline.shapes.evaluation import EvalReport

    groups: dict[str, list] = defaultdict(list)
    for image in report.images:
        groups[f"{len(image.entities)} entities"].append(image)
    table = Table(title=title)
    regions = bool(report.region_scores)  # mask IoU and coverage columns when regions other than boxes were scored
    columns = ("layouts", "images", "entities", "mIoU", "success", *(("mask IoU", "coverage") if regions else ()))
    for column in columns:
        table.add_column(column, justify="right" if column != "layouts" else "left")
    for name, images in [*sorted(groups.items()), ("all", report.images)]:
        part = EvalReport(images)
        extra = part.region_scores
        table.add_row(name, str(len(images)), str(len(part.scores)), f"{part.miou:.3f}", f"{part.success_rate:.1%}",
                      *((f"{extra.get('mask_iou', 0):.3f}", f"{extra.get('coverage', 0):.1%}") if regions else ()))
    return table


def eval_command(
    layouts: Annotated[list[Path], typer.Argument(
        metavar="LAYOUTS", help="Layout YAML files or folders of them (box, polygon or mask regions).")],
    model: Annotated[str | None, typer.Option(
        metavar="MODEL", help="Model folder, hub id or built-in name (overrides the files).")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 per layout.")] = 4,
    steps: Annotated[int | None, typer.Option(
        help="Sampling steps [default: the file's, else the model's: 24 for shapes, 50 for FLUX.1-dev].")] = None,
    cfg: Annotated[float | None, typer.Option(
        metavar="SCALE", help="True CFG scale [default: the file's, else the model's: 3.0].")] = None,
    transformer: Annotated[str | None, typer.Option(
        metavar="FILE", help="Single-file transformer checkpoint replacing the model's (e.g. a `eligen train --full` "
        "result).")] = None,
    lora: Annotated[str | None, typer.Option(
        metavar="FILE", help="A LoRA to use (replaces the files' `loras`).")] = None,
    entity_tokens: EntityTokensOpt = None,
    global_only: Annotated[bool, typer.Option(
        "--global-only", help="Generate from the global prompt alone (no entities); score against the layout.")]
    = False,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Folder for eval.json and contact.png [default: no files].")] = None,
    device: DeviceOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate each layout over several seeds, detect the coloured shapes and score every entity.

    \b
    Examples:
      eligen eval layouts/shapes.yaml --model shapes --seeds 8
      eligen eval heldout-layouts --model shapes --seeds 4 --steps 16 -o eval-out
      eligen eval heldout-layouts --model shapes-base --global-only   # the baseline without entities
    """
    from eligen.pipeline.layout_warnings import check_layout
    from eligen.pipeline.model_info import scale_factor
    from eligen.pipeline.regions import entity_masks, token_masks
    from eligen.pipeline.shapes.evaluation import contact_sheet, evaluate, overlay

    overrides = {"model": model, "transformer": transformer, "steps": steps, "cfg": cfg,
                 "entity_tokens": entity_tokens_value(entity_tokens),
                 "loras": [{"path": str(Path(lora).resolve()) if Path(lora).is_file() else lora}] if lora else None}
    with user_errors():
        sources = [load_source(path, overrides) for path in _layout_paths(layouts)]
        region_masks: dict[str, list[np.ndarray]] = {}
        for src in sources:
            _check_scorable(src)
            factor = scale_factor(src.layout.model)
            region_masks[src.source] = entity_masks(src.layout, src.base_dir, src.source)
            check_layout(src.layout, region_masks[src.source], factor, src.source)
        targets = [output / "eval.json", output / "contact.png"] if output else []
        check_writable(targets, overwrite)
        from eligen.pipeline.generate import EligenPipeline

        pipes: dict[tuple[str, str | None], EligenPipeline] = {}
        by_name: dict[str, LayoutSource] = {src.source: src for src in sources}

        def render(name: str, layout: Layout, seed: int) -> Image.Image:
            src = by_name[name]
            key = (layout.model, layout.transformer)
            if key not in pipes:
                with status(f"loading {key[0]}"):
                    pipes[key] = EligenPipeline.from_pretrained(key[0], transformer=key[1], device=device)
            shown = layout.model_copy(update={"entities": []}) if global_only else layout
            return pipes[key].generate(shown, [seed], src.base_dir, src.source)[0]

        report, images = evaluate([(src.source, src.layout, region_masks[src.source]) for src in sources],
                                  list(range(seeds)), render)

    title = f"{len(sources)} layouts x {seeds} seeds" + (", global prompt only" if global_only else "")
    Console().print(_summary_table(report, title))
    if output is None:
        return
    output.mkdir(parents=True, exist_ok=True)
    cells = []
    for name, _, image in images:
        src = by_name[name]
        factor = next(iter(pipes.values())).scale_factor
        masks = region_masks[name]
        cells.append(overlay(image, src.layout, masks, token_masks(masks, factor, src.layout, src.source), 2 * factor))
    save_png(contact_sheet(cells, columns=seeds * max(1, 8 // seeds)), output / "contact.png")
    options = {"model": sources[0].layout.model, "seeds": seeds, "steps": sources[0].layout.steps,
               "cfg": sources[0].layout.cfg, "entity_tokens": sources[0].layout.entity_tokens,
               "global_only": global_only, "transformer": sources[0].layout.transformer,
               "lora": lora}
    (output / "eval.json").write_text(json.dumps({**options, **report.to_json()}, indent=1) + "\n", encoding="utf-8")
    err.print(f"wrote {output / 'eval.json'} and {output / 'contact.png'}")


def register(app: typer.Typer) -> None:
    """Add `data` (with `shapes`) and `eval` to the app."""
    app.add_typer(data_app, name="data")
    app.command("eval")(eval_command)

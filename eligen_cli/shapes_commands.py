"""`eligen data shapes`: synthetic shape scenes.

`register(app)` adds both to a Typer app. No model math here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import err

if TYPE_CHECKING:

    pass

data_app = typer.Typer(help="Write synthetic training datasets.", no_args_is_help=True, rich_markup_mode=None)


@data_app.command("shapes")
def data_shapes(
    output: Annotated[Path, typer.Option("-o", "--output", help="Dataset folder (metadata.jsonl, images/, masks/).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed; the dataset depends on it only.")] = 0,
    size: Annotated[int | None, typer.Option(min=16, help="Image side in pixels (a multiple of 16) [default: the "
                                             "built-in shapes model's, 128].")] = None,
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
      eligen data shapes -o shapes-data --n 8000 --seed 1           # a training set (128x128 scenes)
      eligen data shapes -o heldout --n 64 --seed 999 --entities 2-3 --layouts heldout-layouts
      eligen data shapes -o masked --n 64 --seed 999 --entities 2-3 --layouts masked-layouts --regions mask
      eligen generate heldout-layouts/00000.yaml                     # a scene's layout, on the shapes model
    """
    from eligen.pipeline.model_info import default_size
    from eligen.pipeline.shapes.scenes import PALETTE, SHAPES_MODEL, write_shapes_dataset

    low, _, high = entities.partition("-")
    most = len(PALETTE)
    if not (low.isdigit() and (high or low).isdigit()) or not 1 <= int(low) <= int(high or low) <= most:
        raise typer.BadParameter(f"expected COUNT or LOW-HIGH within 1-{most}, got {entities!r}",
                                 param_hint="--entities")
    if regions not in ("box", "polygon", "mask"):
        raise typer.BadParameter(f"expected box, polygon or mask, got {regions!r}", param_hint="--regions")
    if size is None:  # the world the built-in model was trained in, so the layouts render at its size
        size = default_size(SHAPES_MODEL)[0]
    if size % 16:
        raise typer.BadParameter(f"expected a multiple of 16, got {size}", param_hint="--size")
    if (output / "metadata.jsonl").exists():
        raise typer.BadParameter(f"{output} already holds a dataset", param_hint="-o/--output")
    counts = tuple(range(int(low), int(high or low) + 1))
    write_shapes_dataset(output, n, seed, size, counts, layouts, regions)  # type: ignore[arg-type]
    err.print(f"wrote {n} scenes to {output / 'metadata.jsonl'}" + (f" and layouts to {layouts}" if layouts else ""))


def register(app: typer.Typer) -> None:
    """Add `data` (with `shapes`) to the app."""
    app.add_typer(data_app, name="data")

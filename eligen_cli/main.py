"""The `eligen` command line: parse, validate, call the pipeline, report, write. No model math here.

Heavy modules (torch, diffusers) are imported inside the commands that need them, so `eligen --help`
and `eligen preview` start fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TaskID
from rich.text import Text

from eligen import __version__
from eligen.pipeline.layout import LayoutError
from eligen.pipeline.outputs import OutputError, check_writable, save_png

from .sources import LayoutSource, load_source

app = typer.Typer(
    help="Entity-level controlled image generation (EliGen) on FLUX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        print(f"eligen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Entity-level controlled image generation (EliGen) on FLUX."""


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a person can fix into one clear line and the documented exit status."""
    try:
        yield
    except LayoutError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        raise typer.Exit(2) from None
    except OutputError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        raise typer.Exit(1) from None


def _preview_image(src: LayoutSource, scale_factor: int):
    """Rasterise and validate the regions of a layout, and draw its preview."""
    from eligen.pipeline.preview import draw_preview
    from eligen.pipeline.regions import check_canvas, entity_masks, token_masks

    check_canvas(src.layout, scale_factor, src.source)
    masks = entity_masks(src.layout, src.base_dir, src.source)
    tokens = token_masks(masks, scale_factor, src.layout, src.source)
    return masks, draw_preview(src.layout, masks, tokens, scale_factor * 2)


def _preview_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}.preview.png")


@app.command()
def preview(
    layout: Annotated[Path, typer.Argument(help="Layout YAML file (or a PNG written by eligen).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Preview PNG [default: <stem>.preview.png].")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Draw a layout's regions and the token cells the model will see, without loading a model."""
    from eligen.pipeline.model_info import scale_factor

    with _user_errors():
        src = load_source(layout, {})
        target = output or Path(f"{layout.stem}.preview.png")
        check_writable([target], overwrite)
        _, image = _preview_image(src, scale_factor(src.layout.model))
        save_png(image, target)
    err.print(f"wrote {target}")


@app.command()
def generate(
    layouts: Annotated[list[Path], typer.Argument(help="Layout YAML files, or PNGs written by eligen to re-run.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output",
        help="Output PNG (one layout only) [default: <layout stem>.png, <stem>-<seed>.png for several seeds].",
    )] = None,
    seed: Annotated[list[int] | None, typer.Option(help="Seed; repeat for one image per seed.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps [layout default: 50].")] = None,
    cfg: Annotated[float | None, typer.Option(help="True CFG scale, 1 turns it off [layout default: 3.0].")] = None,
    guidance: Annotated[float | None, typer.Option(help="FLUX embedded guidance [layout default: 3.5].")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Sigma schedule: flux or diffsynth [layout default: flux].")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Diffusers FLUX folder or hub id (overrides the layout).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu [default: the best available].")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bf16, fp16 or fp32 [default: bf16 on GPU, fp32 on CPU].")
    ] = None,
    offload: Annotated[str, typer.Option(help="none, model or sequential CPU offload.")] = "none",
    preview: Annotated[bool, typer.Option("--preview", help="Also write <output stem>.preview.png.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and write the preview only.")] = False,
) -> None:
    """Render layout files to PNGs with entity-level regional attention."""
    from eligen.pipeline.model_info import scale_factor

    overrides = {"seed": seed or None, "steps": steps, "cfg": cfg, "guidance": guidance, "schedule": schedule,
                 "model": model}
    with _user_errors():
        if offload not in ("none", "model", "sequential"):
            raise typer.BadParameter(f"expected none, model or sequential, got {offload!r}", param_hint="--offload")
        if output is not None and len(layouts) > 1:
            raise typer.BadParameter("names one file; with several layouts leave it out", param_hint="-o/--output")
        jobs = []
        for path in layouts:
            src = load_source(path, overrides)
            masks, preview_image = _preview_image(src, scale_factor(src.layout.model))
            jobs.append((src, masks, preview_image, src.output_paths(output)))
        targets = [p for *_, outs in jobs for p in outs]
        previews = [_preview_path(p) for p in targets] if preview or dry_run else []
        check_writable(targets * (not dry_run) + previews, overwrite)
        for *_, image, outs in jobs:
            for out in outs if preview or dry_run else []:
                save_png(image, _preview_path(out))
                err.print(f"wrote {_preview_path(out)}")
        if dry_run:
            err.print(f"{len(jobs)} layout(s) valid; dry run, no image generated")
            return
        _render(jobs, device=device, dtype=dtype, offload=offload)


class _SpeedColumn(ProgressColumn):
    """Steps per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "-- it/s")


def _render(jobs: list, *, device: str | None, dtype: str | None, offload: str) -> None:
    """Load each distinct model once and render every job's seeds with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from eligen.pipeline.generate import EligenPipeline
    from eligen.pipeline.models import ModelLoadError
    from eligen.pipeline.regions import inline_masks

    pipes: dict[str, EligenPipeline] = {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _SpeedColumn(),
               TimeRemainingColumn()]
    for src, masks, _, outs in jobs:
        layout = src.layout
        if layout.model not in pipes:
            with err.status(f"loading {layout.model}"):
                try:
                    pipes[layout.model] = EligenPipeline.from_pretrained(
                        layout.model, device=device, dtype=dtype, offload=offload
                    )
                except ModelLoadError as exc:
                    err.print(f"[bold red]error:[/] {exc}", markup=True)
                    raise typer.Exit(1) from None
        pipe = pipes[layout.model]
        resolved = inline_masks(layout, masks).model_copy(
            update={"max_sequence_length": pipe.max_sequence_length(layout)}
        )
        regions = pipe.token_regions(layout, src.base_dir, src.source)
        positive, negative = pipe.conditionings(layout, regions)
        for seed, out in zip(src.seeds, outs, strict=True):
            with Progress(*columns, console=err, transient=True) as progress:
                task = progress.add_task(f"{src.path.name} seed {seed}", total=layout.steps)

                def advance(done: int, _total: int, progress: Progress = progress, task: TaskID = task) -> None:
                    progress.update(task, completed=done)

                tokens = pipe.sample(layout, positive, negative, seed, on_step=advance)
            image = pipe.decode(tokens, layout)
            metadata = {
                "eligen_version": __version__,
                "model": layout.model,
                "seed": seed,
                "layout": resolved.model_copy(update={"seed": seed}).model_dump(mode="json", exclude_none=True),
            }
            save_png(image, out, metadata)
            err.print(f"wrote {out}")


@app.command("tiny-model")
def tiny_model(
    folder: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
) -> None:
    """Write a tiny random-weight FLUX model folder for trying eligen offline (its images are noise)."""
    from eligen.pipeline.tiny_model import build_tiny_flux

    try:
        path = build_tiny_flux(folder, seed=seed)
    except FileExistsError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        raise typer.Exit(1) from None
    err.print(f"wrote {path} (random weights: its images are noise)")

"""The commands that talk to a multimodal LLM: `eligen plan`, `eligen chat`, `eligen annotate`.

They only parse options, call `eligen.agent` and report; the MLLM client, transformers and torch are
imported inside the commands, so `eligen --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .common import OverwriteOpt, err, user_errors

if TYPE_CHECKING:
    from eligen.agent.config import MllmSettings
    from eligen.agent.messages import ChatBackend
    from eligen.pipeline.layout import Layout


MllmUrlOpt = Annotated[str | None, typer.Option(
    "--mllm-url", metavar="URL",
    help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM) [env ELIGEN_MLLM_URL].")]
MllmModelOpt = Annotated[str | None, typer.Option(
    "--mllm-model", metavar="NAME",
    help="Model name at the endpoint [default: the first one it serves] [env ELIGEN_MLLM_MODEL].")]
MllmFamilyOpt = Annotated[Literal["qwen2-vl", "qwen2.5-vl", "qwen3-vl"] | None, typer.Option(
    "--mllm-family", help="How the model writes boxes [default: qwen2.5-vl] [env ELIGEN_MLLM_FAMILY].")]
MllmLocalOpt = Annotated[str | None, typer.Option(
    "--mllm-local", metavar="MODEL", help="Run a Qwen-VL model locally: hub id or folder (needs eligen[local]) "
    "[env ELIGEN_MLLM_LOCAL].")]
MllmDeviceOpt = Annotated[str | None, typer.Option(
    "--mllm-device", metavar="DEVICE",
    help="Device of the local MLLM [default: the best available] [env ELIGEN_MLLM_DEVICE].")]
MllmTimeoutOpt = Annotated[float | None, typer.Option(
    "--mllm-timeout", metavar="SECONDS",
    help="Seconds to wait for one answer [default: 60] [env ELIGEN_MLLM_TIMEOUT].")]
MllmRetriesOpt = Annotated[int | None, typer.Option(
    "--mllm-retries", help="Retries after 408/409/429/5xx, timeouts and connection errors [default: 3] "
    "[env ELIGEN_MLLM_RETRIES].")]
MllmMaxPixelsOpt = Annotated[int | None, typer.Option(
    "--mllm-max-pixels", help="Largest image area sent; at most the server's max_pixels [default: 1003520] "
    "[env ELIGEN_MLLM_MAX_PIXELS].")]


def _settings(**flags: Any) -> MllmSettings:
    from eligen.agent.config import load_settings

    return load_settings(flags)


def _backend(settings: MllmSettings) -> ChatBackend:
    from eligen.agent.backends import make_backend

    if settings.local:
        with err.status(f"loading {settings.local}"):
            return make_backend(settings)
    return make_backend(settings)


def layout_table(layout: Layout) -> Table:
    """The layout's entities and boxes as a rich table, titled with its global prompt."""
    table = Table(title=layout.prompt, title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("entity")
    table.add_column("box x1, y1, x2, y2 (px)")
    for index, entity in enumerate(layout.entities, 1):
        region = ", ".join(f"{v:g}" for v in entity.box) if entity.box is not None else entity.region_kind
        table.add_row(str(index), Text(entity.prompt), region)
    return table


def show_plan(console: Console, layout: Layout, notes: list[str]) -> None:
    """The table of a planned layout, and the repairs made to the MLLM's answer."""
    console.print(layout_table(layout))
    if notes:
        console.print(f"repaired the answer: {'; '.join(notes)}", markup=False, highlight=False)


def _size(size: tuple[int, int] | None) -> tuple[int, int]:
    from eligen.pipeline.layout import parse_layout

    size = size or (1024, 1024)
    parse_layout({"size": list(size), "prompt": "-"}, "--size")  # refused before the MLLM is asked
    return size


def write_preview(layout: Layout, target: Path, image: Any = None) -> None:
    """Write the regions (over `image` for edits) as `eligen preview` / `inpaint --preview` draw them."""
    from eligen.agent.previews import preview_image
    from eligen.pipeline.outputs import save_png

    save_png(preview_image(layout, Path("."), image), target)
    err.print(f"wrote {target}")


def plan(
    request: Annotated[str, typer.Argument(metavar="REQUEST", help="What to draw, or with --image what to change.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Layout (or edits) YAML to write [default: print it].")] = None,
    size: Annotated[tuple[int, int] | None, typer.Option(
        help="Canvas width and height, multiples of 16 [default: 1024 1024].")] = None,
    image: Annotated[Path | None, typer.Option(
        "--image", help="Plan edits of this image for `eligen inpaint` instead (boxes in its pixels).")] = None,
    preview: Annotated[bool, typer.Option("--preview", help="Also write <output stem>.preview.png.")] = False,
    overwrite: OverwriteOpt = False,
    mllm_url: MllmUrlOpt = None,
    mllm_model: MllmModelOpt = None,
    mllm_family: MllmFamilyOpt = None,
    mllm_local: MllmLocalOpt = None,
    mllm_device: MllmDeviceOpt = None,
    mllm_timeout: MllmTimeoutOpt = None,
    mllm_retries: MllmRetriesOpt = None,
    mllm_max_pixels: MllmMaxPixelsOpt = None,
) -> None:
    """Plan a layout file from a request with a multimodal LLM (or, with --image, an edits file).

    \b
    Examples:
      eligen plan "a cat on a sofa under a lamp" -o cat.yaml --preview --mllm-url http://localhost:8000/v1
      eligen plan "make the car red" --image photo.png -o edits.yaml     # then: eligen inpaint photo.png edits.yaml
    """
    from eligen.agent.layout_yaml import dump_layout, write_layout
    from eligen.agent.plan import design_layout, plan_edits
    from eligen.pipeline.outputs import check_writable

    if image is not None and size is not None:
        raise typer.BadParameter("the size of edits is the image's; leave --size out", param_hint="--size")
    if preview and output is None:
        raise typer.BadParameter("needs -o: the preview is written beside the output", param_hint="--preview")
    with user_errors():
        settings = _settings(url=mllm_url, model=mllm_model, family=mllm_family, local=mllm_local,
                             device=mllm_device, timeout=mllm_timeout, retries=mllm_retries,
                             max_pixels=mllm_max_pixels)
        canvas = _size(size) if image is None else None
        source = _read_image(image) if image is not None else None
        preview_path = output.with_name(f"{output.stem}.preview.png") if output and preview else None
        check_writable([p for p in (output, preview_path) if p], overwrite)
        backend = _backend(settings)
        with err.status(f"asking {settings.endpoint}"):
            if source is None:
                result = design_layout(backend, settings.family, request, canvas)
            else:
                result = plan_edits(backend, settings.family, request, source)
        show_plan(err, result.layout, result.notes)
        if output is None:
            sys.stdout.write(dump_layout(result.layout))
            return
        write_layout(result.layout, output, overwrite)
        err.print(f"wrote {output}")
        if preview_path:
            write_preview(result.layout, preview_path, source)


def _read_image(path: Path) -> Any:
    """The image to edit, upright and RGB."""
    from eligen.pipeline.images import open_rgb

    return open_rgb(path, str(path), "(image)")


def _lines(console: Console) -> Iterator[str]:
    """Lines typed at a prompt, or read from piped input (echoed, so a transcript reads like a conversation)."""
    if sys.stdin.isatty():
        while True:
            try:
                yield console.input("you> ")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
    for line in sys.stdin:
        console.print(f"you> {line.rstrip()}", markup=False, highlight=False)
        yield line


def chat(
    session: Annotated[Path | None, typer.Option(
        help="Session folder: resumed when it holds a session [default: a new chat-YYYYMMDD-HHMMSS folder].")] = None,
    model: Annotated[str | None, typer.Option(metavar="MODEL", help="Diffusers FLUX folder, hub id or built-in name "
                                              "for rendering [default: black-forest-labs/FLUX.1-dev].")] = None,
    size: Annotated[tuple[int, int] | None, typer.Option(
        help="Canvas width and height of new designs, multiples of 16 [default: the model's size, 1024 1024 for "
        "FLUX.1-dev].")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Sampling steps of new designs [default: the model's, 50 for FLUX.1-dev].")] = None,
    device: Annotated[str | None, typer.Option(
        metavar="DEVICE", help="cuda, mps or cpu for rendering [default: the best].")] = None,
    dtype: Annotated[Literal["bf16", "fp16", "fp32"] | None, typer.Option(
        help="Weights dtype [default: bf16 on GPU, fp32 on CPU].")] = None,
    mllm_url: MllmUrlOpt = None,
    mllm_model: MllmModelOpt = None,
    mllm_family: MllmFamilyOpt = None,
    mllm_local: MllmLocalOpt = None,
    mllm_device: MllmDeviceOpt = None,
    mllm_timeout: MllmTimeoutOpt = None,
    mllm_retries: MllmRetriesOpt = None,
    mllm_max_pixels: MllmMaxPixelsOpt = None,
) -> None:
    """Design, refine, render and edit images by conversation with a multimodal LLM (/help inside).

    \b
    Examples:
      eligen chat --mllm-url http://localhost:8000/v1
      eligen chat --model shapes --mllm-url http://localhost:8000/v1   # renders on a CPU, at 128x128
      eligen chat --session chat-20260101-120000                       # resume a session
      printf 'a red circle\\n/render\\n' | eligen chat --model shapes ...  # piped input works too
    """
    from datetime import datetime

    from eligen.agent.chat import Chat
    from eligen.agent.render import Renderer
    from eligen.agent.session import Session
    from eligen.pipeline.model_info import declaration, resolve_model

    out = Console(highlight=False, soft_wrap=True)
    with user_errors():
        settings = _settings(url=mllm_url, model=mllm_model, family=mllm_family, local=mllm_local,
                             device=mllm_device, timeout=mllm_timeout, retries=mllm_retries,
                             max_pixels=mllm_max_pixels)
        model = resolve_model(model, Path.cwd(), "--model", "--model") if model else None
        canvas = _size(size or (declaration(model).size if model else None))  # the model's native size
        defaults: dict[str, Any] = {"model": model} if model else {}
        if steps is not None:
            defaults["steps"] = steps
        folder = session or Path(f"chat-{datetime.now():%Y%m%d-%H%M%S}")
        state = Session.open(folder)
        backend = _backend(settings)
    resumed = f", resumed at {state.current.layout or 'the start'}" if state.steps else ""
    out.print(f"session {folder} (MLLM: {settings.endpoint}, {settings.family}){resumed}; /help for commands",
              markup=False)
    conversation = Chat(state, backend, settings.family, Renderer(device, dtype), out,
                        lambda layout, notes: show_plan(out, layout, notes), canvas, defaults)
    for line in _lines(out):
        if not conversation.handle(line):
            break
    if conversation.failures:
        raise typer.Exit(1)


def annotate(
    images: Annotated[Path, typer.Argument(
        metavar="IMAGES_DIR", help="Folder of images (PNG, JPEG, WebP) to caption and ground.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Dataset folder to write (images/ and "
                                         "metadata.jsonl).")],
    overwrite: OverwriteOpt = False,
    mllm_url: MllmUrlOpt = None,
    mllm_model: MllmModelOpt = None,
    mllm_family: MllmFamilyOpt = None,
    mllm_local: MllmLocalOpt = None,
    mllm_device: MllmDeviceOpt = None,
    mllm_timeout: MllmTimeoutOpt = None,
    mllm_retries: MllmRetriesOpt = None,
    mllm_max_pixels: MllmMaxPixelsOpt = None,
) -> None:
    """Caption images and ground their entities with a multimodal LLM, as a training dataset.

    \b
    Examples:
      eligen annotate photos/ -o my-dataset --mllm-url http://localhost:8000/v1
      eligen train --data my-dataset --model shapes-base -o run --steps 200     # then train on it
    """
    from eligen.agent.annotate import Annotation, annotate_images, image_files, write_dataset

    def report(result: Annotation) -> None:
        if result.record is None:
            failed.append(result.image)
            err.print(Text.assemble(("skipped ", "bold red"), f"{result.image.name}: {result.problem}"))
        else:
            err.print(f"{result.image.name}: {len(result.record['entities'])} entities"
                      + (f" (repaired: {'; '.join(result.notes)})" if result.notes else ""))

    failed: list[Path] = []
    with user_errors():
        settings = _settings(url=mllm_url, model=mllm_model, family=mllm_family, local=mllm_local,
                             device=mllm_device, timeout=mllm_timeout, retries=mllm_retries,
                             max_pixels=mllm_max_pixels)
        files = image_files(images)
        backend = _backend(settings)
        written = write_dataset(annotate_images(backend, settings.family, files), output, overwrite, report)
    err.print(f"wrote {output / 'metadata.jsonl'}: {written} of {len(files)} images")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the MLLM commands to the `eligen` app."""
    app.command()(plan)
    app.command()(chat)
    app.command()(annotate)

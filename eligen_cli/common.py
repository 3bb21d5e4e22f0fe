"""What every command shares: the error console, the exit statuses of user errors, common options."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.text import Text

err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

OverwriteOpt = Annotated[bool, typer.Option(help="Replace existing output files.")]
EntityTokensOpt = Annotated[str | None, typer.Option(
    metavar="max|auto|N", help="Text tokens per entity prompt: max (all, as the reference), auto (its own "
    "tokens) or a number [default: the layout's, else max].")]
DeviceOpt = Annotated[str | None, typer.Option(
    metavar="DEVICE", help="cuda, mps or cpu [default: the best available].")]
ThreadsOpt = Annotated[int | None, typer.Option(
    min=1, metavar="N", help="Torch CPU threads [default: OMP_NUM_THREADS if set, else 1 for a small model such "
    "as shapes, else torch's].")]

# How a model is loaded (`eligen generate`, `eligen inpaint`, `eligen studio`).
TransformerOpt = Annotated[str | None, typer.Option(
    metavar="FILE", help="Single-file transformer checkpoint replacing the model's: a local .safetensors or "
    "hub-repo-id/path/in/repo.safetensors; the rest comes from the model (overrides the file).")]
DtypeOpt = Annotated[Literal["bf16", "fp16", "fp32"] | None,
                     typer.Option(help="Weights dtype [default: bf16 on GPU, fp32 on CPU].")]
OffloadOpt = Annotated[Literal["none", "model", "sequential"], typer.Option(help="CPU offload of the weights.")]
QuantizeOpt = Annotated[Literal["none", "nf4", "int8", "fp8"], typer.Option(
    help="Quantise the transformer: nf4 (bitsandbytes, CUDA), int8 or fp8 (torchao, weight-only).")]


def _png_name(value: Path | None) -> Path | None:
    """Refuse a name not ending in .png (an existing folder is left to `check_writable`, which says so)."""
    if value is not None and not value.is_dir() and value.suffix.lower() != ".png":
        raise typer.BadParameter(f"expected a file name ending in .png, got {str(value)!r}: eligen writes PNG, "
                                 "with the layout embedded in it")
    return value


def png_output(help: str) -> Any:
    """The `-o/--output PATH` option of a command that writes one PNG per image (any other suffix is refused)."""
    return typer.Option("-o", "--output", metavar="PATH", callback=_png_name, help=help)


def entity_tokens_value(value: str | None) -> str | int | None:
    """`--entity-tokens`: a number of tokens as an int, a name as it is (the layout validates both)."""
    return int(value) if value is not None and value.isdigit() else value


def fail(message: object, code: int) -> typer.Exit:
    """Print `error: message` on stderr and return the exit to raise."""
    err.print(Text.assemble(("error: ", "bold red"), str(message)))
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a person can fix become one message: exit 2 for invalid input files, 1 for models, MLLMs and
    outputs. Anything else is a bug and keeps its traceback."""
    from eligen.agent.errors import AgentError
    from eligen.pipeline.layout import LayoutError
    from eligen.pipeline.model_info import ModelLoadError
    from eligen.pipeline.outputs import OutputError

    try:
        yield
    except LayoutError as exc:
        raise fail(exc, 2) from None
    except (AgentError, OutputError, ModelLoadError) as exc:
        raise fail(exc, 1) from None

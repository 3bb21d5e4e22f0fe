"""`eligen train`: validate a dataset, then train (on one process, or several through accelerate's launcher).

Options come from the command line and from a YAML config file (`--config`, keys named like the options with
underscores; paths in it are relative to its folder); the command line wins. No model math here.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from eligen.pipeline.layout import LayoutError
from eligen.pipeline.model_info import resolve_model
from eligen.pipeline.structured_text import NestingError, load_yaml
from eligen.pipeline.train.config import (
    PATH_KEYS,
    ExportStyle,
    LrSchedule,
    MixedPrecision,
    SaveDtype,
    TimestepSampling,
    TrainConfig,
    WeightDtype,
    parse_config,
)

from .common import err, fail
from .launching import LAUNCHED, cuda_available, launcher_arguments, run_launcher


def _help(name: str) -> str:
    """An option's help text from the config schema, with its default."""
    field = TrainConfig.model_fields[name]
    hidden = field.is_required() or field.default is None or "[default:" in (field.description or "")
    shown = "" if hidden else f" [default: {field.default}]"
    return f"{field.description}{shown}"


METAVARS = {"model": "MODEL", "device": "DEVICE", "resume": "latest|PATH"}  # the others are named by their type


def _option(name: str, *flags: str) -> Any:
    return typer.Option(*flags or (f"--{name.replace('_', '-')}",), help=_help(name), show_default=False,
                        metavar=METAVARS.get(name))


def _flag(name: str) -> Any:
    dashed = name.replace("_", "-")
    return typer.Option(f"--{dashed}/--no-{dashed}", help=_help(name), show_default=False)


def _read_config_file(path: Path) -> dict[str, Any]:
    """A YAML config file (safe_load) as option values, its paths resolved against its folder."""
    source = str(path)
    if not path.is_file():
        raise LayoutError(source, "(file)", "expected an existing YAML config file")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, NestingError) as exc:
        raise LayoutError(source, "(yaml)", f"expected a valid YAML file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LayoutError(source, "(top level)", f"expected a mapping of options, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key in PATH_KEYS:
        if isinstance(data.get(key), str):
            data[key] = str(path.parent / Path(data[key]).expanduser())
    if isinstance(data.get("model"), str):
        data["model"] = resolve_model(data["model"], path.parent, source)
    return data


def merge_options(config_file: Path | None, given: dict[str, Any]) -> TrainConfig:
    """Config-file values overridden by the options given on the command line, validated."""
    data = _read_config_file(config_file) if config_file is not None else {}
    given = {k: v for k, v in given.items() if v is not None}
    if "model" in given:
        given["model"] = resolve_model(given["model"], Path.cwd(), "--model", "--model")
    return parse_config({**data, **given}, str(config_file or "(command line)"), frozenset(given))


def launch(config: TrainConfig) -> None:
    """Run this command in `num_processes` processes through accelerate's launcher (torchrun underneath).

    The resolved options travel in a temporary YAML file; the launched processes train, the main one reports.
    """
    if config.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        raise fail("--deepspeed needs the deepspeed package: pip install deepspeed", 1)
    cpu = config.device == "cpu" or not cuda_available()
    arguments = launcher_arguments(config.num_processes, config.mixed_precision or ("no" if cpu else "bf16"))
    if config.deepspeed is not None:
        arguments = [a for a in arguments if a != "--multi_gpu"]
        arguments += ["--use_deepspeed", "--deepspeed_config_file", str(config.deepspeed)]
    values = config.model_dump(mode="json", exclude_none=True)
    values |= {key: str(Path(values[key]).resolve()) for key in PATH_KEYS if key in values}
    with tempfile.TemporaryDirectory(prefix="eligen-train-") as folder:
        options = Path(folder) / "options.yaml"
        options.write_text(yaml.safe_dump(values), encoding="utf-8")
        run_launcher(arguments, ["train", "--config", str(options)], "a training")


class _ProgressReporter:
    """Steps, loss and samples/s on a rich progress bar; notes above it."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, total: int, done: int) -> None:
        self.task = self.progress.add_task("training", total=total, completed=done, loss=float("nan"), rate=0.0)

    def step(self, report: Any) -> None:
        assert self.task is not None
        self.progress.update(self.task, completed=report.step, loss=report.loss, rate=report.samples_per_s)

    def note(self, message: str) -> None:
        self.progress.console.print(message)


@contextmanager
def _training_errors():
    """Dataset and option problems exit 2 (every bad line listed); a run that cannot go on exits 1."""
    from eligen.pipeline.dataset import DatasetError
    from eligen.pipeline.lora import LoraError
    from eligen.pipeline.model_info import ModelLoadError
    from eligen.pipeline.train.cache import CacheError
    from eligen.pipeline.train.loop import TrainError
    from eligen.pipeline.train.state import CheckpointError

    try:
        yield
    except DatasetError as exc:
        for problem in exc.problems[:50]:
            err.print(f"error: {problem}")
        more = len(exc.problems) - 50
        raise fail(f"{len(exc.problems)} problem(s) in the dataset" + (f" ({more} not shown)" if more > 0 else ""),
                    2) from None
    except LayoutError as exc:
        raise fail(exc, 2) from None
    except (TrainError, CheckpointError, CacheError, ModelLoadError, LoraError) as exc:
        raise fail(exc, 1) from None


def _check(config: TrainConfig) -> None:
    from eligen.pipeline.train.loop import check

    dataset = check(config.data, config.model, config.resolution, config.bucket_step)
    entities = sum(len(s.layout.entities) for s in dataset.samples)
    buckets = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(dataset.buckets().items()))
    err.print(f"{dataset.metadata}: {len(dataset.samples)} samples, {entities} entities, all valid; "
              f"buckets at resolution {config.resolution}: {buckets}")


def train(
    data: Annotated[Path | None, _option("data")] = None,
    output: Annotated[Path | None, _option("output", "-o", "--output")] = None,
    model: Annotated[str | None, _option("model")] = None,
    steps: Annotated[int | None, _option("steps")] = None,
    stop_at: Annotated[int | None, _option("stop_at")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of options (keys as the options, with "
                                                "underscores); the command line wins.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the whole dataset (every image decoded) and "
                                        "exit: 0 when valid, 2 listing every bad line.")] = False,
    batch_size: Annotated[int | None, _option("batch_size")] = None,
    grad_accum: Annotated[int | None, _option("grad_accum")] = None,
    rank: Annotated[int | None, _option("rank")] = None,
    alpha: Annotated[float | None, _option("alpha")] = None,
    lr: Annotated[float | None, _option("lr")] = None,
    weight_decay: Annotated[float | None, _option("weight_decay")] = None,
    warmup_steps: Annotated[int | None, _option("warmup_steps")] = None,
    lr_schedule: Annotated[LrSchedule | None, _option("lr_schedule")] = None,
    max_grad_norm: Annotated[float | None, _option("max_grad_norm")] = None,
    full: Annotated[bool | None, _flag("full")] = None,
    resolution: Annotated[int | None, _option("resolution")] = None,
    bucket_step: Annotated[int | None, _option("bucket_step")] = None,
    max_sequence_length: Annotated[int | None, _option("max_sequence_length")] = None,
    timesteps: Annotated[TimestepSampling | None, _option("timesteps")] = None,
    timestep_shift: Annotated[float | None, _option("timestep_shift")] = None,
    entity_dropout: Annotated[float | None, _option("entity_dropout")] = None,
    caption_dropout: Annotated[float | None, _option("caption_dropout")] = None,
    cache: Annotated[bool | None, _flag("cache")] = None,
    cache_dir: Annotated[Path | None, _option("cache_dir")] = None,
    gradient_checkpointing: Annotated[bool | None, _flag("gradient_checkpointing")] = None,
    mixed_precision: Annotated[MixedPrecision | None, _option("mixed_precision")] = None,
    dtype: Annotated[WeightDtype | None, _option("dtype")] = None,
    device: Annotated[str | None, _option("device")] = None,
    seed: Annotated[int | None, _option("seed")] = None,
    save_every: Annotated[int | None, _option("save_every")] = None,
    keep_checkpoints: Annotated[int | None, _option("keep_checkpoints")] = None,
    resume: Annotated[str | None, _option("resume")] = None,
    validate_every: Annotated[int | None, _option("validate_every")] = None,
    validation: Annotated[Path | None, _option("validation")] = None,
    holdout: Annotated[int | None, _option("holdout")] = None,
    export: Annotated[ExportStyle | None, _option("export")] = None,
    save_dtype: Annotated[SaveDtype | None, _option("save_dtype")] = None,
    num_workers: Annotated[int | None, _option("num_workers")] = None,
    num_processes: Annotated[int | None, _option("num_processes")] = None,
    deepspeed: Annotated[Path | None, _option("deepspeed")] = None,
) -> None:
    """Train the EliGen LoRA (or the whole transformer) on a dataset of images with entity annotations.

    \b
    Examples:
      eligen train --data my-dataset --check                           # validate every line and image
      eligen train --data my-dataset -o run --steps 1000               # the EliGen LoRA on FLUX.1-dev
      eligen train --config recipes/shapes-eligen.yaml --model shapes-base --data shapes-data -o run
      eligen train --config recipes/shapes-eligen.yaml ... --resume latest --steps 3000
    """
    given = {k: v for k, v in locals().items() if k not in ("config", "check")}
    with _training_errors():
        options = merge_options(config, given)
        if check:
            _check(options)
            return
        if (options.num_processes > 1 or options.deepspeed is not None) and not any(k in os.environ for k in LAUNCHED):
            launch(options)
            return
        from eligen.pipeline.train.loop import train as run_training

        if os.environ.get("RANK", "0") != "0":  # a launched process other than the main one: it reports nothing
            run_training(options)
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.2f} samples/s"),
                   TimeRemainingColumn()]
        with Progress(*columns, console=err) as progress:
            result = run_training(options, _ProgressReporter(progress))
    if result.outputs:
        loss = f", last loss {result.loss:.4f}" if result.loss is not None else ""
        err.print(f"step {result.step}{loss}; wrote {', '.join(str(p) for p in result.outputs)}")


def register(app: typer.Typer) -> None:
    """Add `eligen train` to the command line."""
    app.command("train")(train)

"""What the command line shows while it works: eligen's own warnings, progress, and quiet libraries.

By default torch, diffusers, transformers and the Hugging Face hub are kept quiet (their Python warnings
filtered, their loggers at errors only, their loading bars hidden); `eligen --verbose` shows all of it.
eligen's own `LayoutWarning`s are always shown, as `warning: file: field: ...` lines.
Sampling shows a rich progress bar on a terminal, and plain periodic lines when the output is a file or
a pipe (a log, CI), where a bar would print nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from eligen.pipeline.layout_warnings import LayoutWarning

from .common import err

# Read by the libraries when they are imported (all of them lazily, after this is set): errors only, no bars.
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # diffusers' loading bars: tqdm reads TQDM_* defaults from the environment
    "TORCH_LOGS": "-all",  # torch's Python loggers at errors only
    "TORCH_CPP_LOG_LEVEL": "ERROR",
}
PLAIN_PERIOD_S = 10.0  # seconds between plain progress lines


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None,
                  fallback: Callable[..., None] = warnings.showwarning) -> None:
    """eligen's warnings as `warning: ...` lines; any other through Python's usual display."""
    if issubclass(category, LayoutWarning):
        err.print(Text.assemble(("warning: ", "bold yellow"), str(message)))
    else:
        fallback(message, category, filename, lineno, file, line)


@contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """For one command: eligen's warnings shown, the libraries quiet unless `verbose` (the environment and the
    warning filters are restored afterwards)."""
    saved = {name: os.environ.get(name) for name in QUIET_ENVIRONMENT}
    torch_logger = logging.getLogger("torch")  # TORCH_LOGS is read once, when torch is imported: also set it here
    torch_level = torch_logger.level
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
            for name, value in QUIET_ENVIRONMENT.items():
                os.environ.setdefault(name, value)
            torch_logger.setLevel(logging.ERROR)
        warnings.simplefilter("default", LayoutWarning)  # each distinct warning once
        fallback = warnings.showwarning
        warnings.showwarning = functools.partial(_show_warning, fallback=fallback)
        try:
            yield
        finally:
            torch_logger.setLevel(torch_level)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with `message` on a terminal; the message as one line otherwise."""
    if err.is_terminal:
        with err.status(message):
            yield
    else:
        err.print(message)
        yield


class _SpeedColumn(ProgressColumn):
    """Steps per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "-- it/s")


def _plain_lines(description: str, unit: str = "step") -> Callable[[int, int], None]:
    """An `on_step` that prints `description: UNIT N/T, R it/s, ETA H:MM:SS` after the first step and then at
    most every PLAIN_PERIOD_S seconds."""
    start = time.monotonic()
    last = [start - PLAIN_PERIOD_S]

    def on_step(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or (done > 1 and now - last[0] < PLAIN_PERIOD_S):
            return
        last[0] = now
        rate = done / max(now - start, 1e-9)
        eta = timedelta(seconds=round((total - done) / rate))
        err.print(f"{description}: {unit} {done}/{total}, {rate:.2f} it/s, ETA {eta}")

    return on_step


@contextmanager
def step_progress(description: str, steps: int, unit: str = "step") -> Iterator[Callable[[int, int], None]]:
    """Progress over sampling steps (or other `unit`s), as the sampler's `on_step(done, total)` callback: a
    transient rich bar on a terminal, plain periodic lines otherwise."""
    if not err.is_terminal:
        yield _plain_lines(description, unit)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _SpeedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(description, total=steps)
        yield lambda done, _total: progress.update(task, completed=done)

"""What the tiny offline model builders share: writing a folder that never appears half-written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def quiet_transformers_progress() -> Iterator[None]:
    """Silence transformers' "Writing model shards" progress bar while saving, then restore it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def publish(tmp: Path, out: Path) -> None:
    """Move a finished folder to its name in one rename (the target checked once more just before)."""
    check_target(out)
    if out.is_dir():
        out.rmdir()  # empty (checked just above); rename needs the name free on every platform
    tmp.rename(out)


def check_target(out_dir: Path) -> None:
    """Raise FileExistsError unless out_dir is absent or an empty directory."""
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not empty; refusing to overwrite it")
    elif out_dir.exists() or out_dir.is_symlink():
        raise FileExistsError(f"{out_dir} exists and is not a directory")

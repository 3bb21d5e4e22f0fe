"""Output files: PNGs with the resolved layout embedded, written atomically, never clobbered by accident."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from PIL import Image, PngImagePlugin

from .structured_text import load_json

METADATA_KEY = "eligen"


class OutputError(Exception):
    """An output cannot be written as asked; the message says why."""


class OutputExistsError(OutputError, FileExistsError):
    """The output file exists and overwriting was not asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists; pass --overwrite to replace it, or choose another name with -o")
        self.path = path


def check_writable(paths: list[Path], overwrite: bool) -> None:
    """Refuse before any work when an output is a folder (a file name is needed, `--overwrite` or not), sits
    under a file, exists (unless `overwrite`), or collides with another output."""
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise OutputError(f"two outputs would both be written to {path}; give distinct -o names")
        seen.add(resolved)
        if path.is_dir():
            raise OutputError(f"{path} is a folder; name an output file, e.g. {path / 'image.png'}")
        parent = next((p for p in resolved.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
        if path.exists() and not overwrite:
            raise OutputExistsError(path)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def png_bytes(image: Image.Image, metadata: dict[str, Any] | None = None) -> bytes:
    """`image` encoded as PNG with `metadata` as JSON in one iTXt chunk named `eligen`."""
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_itxt(METADATA_KEY, json.dumps(metadata, separators=(",", ":")), zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write `image` as PNG with `metadata` embedded (`png_bytes`), atomically."""
    data = png_bytes(image, metadata)
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def read_png_metadata(path: Path | IO[bytes]) -> dict[str, Any] | None:
    """The eligen metadata of a PNG written by `save_png` (a path or an open binary file), or None when it has
    none."""
    with Image.open(path) as image:
        text = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    return load_json(text) if text else None  # NestingError (a ValueError) when it nests too deeply

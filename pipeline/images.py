"""The one way eligen reads an image a person gives it (a source to edit, a transfer's target, a reference, a
training sample, an image for the agent): upright as displayed (its EXIF orientation applied) and RGB, with any
transparency composited on white (`BACKGROUND`), so a transparent area shows white and never the colour stored
under it. A file that is missing or not an image is a `LayoutError` naming the file and the field."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .layout import LayoutError

BACKGROUND = (255, 255, 255)  # what transparent pixels become (stated in docs/reliability.md)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` upright (EXIF orientation applied) and RGB, transparency composited on BACKGROUND."""
    upright = ImageOps.exif_transpose(image)
    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in upright.info
    if not has_alpha:
        return upright.convert("RGB")
    rgba = upright.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def open_rgb(path: Path, source: str, field: str) -> Image.Image:
    """The image file at `path` as `to_rgb` gives it; a LayoutError (source, field) when it is missing or cannot be
    decoded."""
    if not path.is_file():
        problem = "this is a folder" if path.is_dir() else "there is no file at this path"
        raise LayoutError(source, field, f"expected an existing image file, {problem}: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            return to_rgb(opened)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise LayoutError(source, field, f"expected a readable image (PNG, JPEG, WebP...), could not decode {path} "
                          f"({exc})") from None

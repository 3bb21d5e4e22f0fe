"""Images for Qwen-VL models: the processors' smart_resize, and images sent at a size it leaves unchanged.

Qwen2.5-VL answers boxes in pixels of the image *after* its processor resized it. Sending an image
already at a size smart_resize returns (it is idempotent) means the processor leaves it alone on
every backend, so those boxes map back to the original with the plain ratio original / sent.
"""

from __future__ import annotations

import base64
import io
import math

from PIL import Image

from .config import Family

FACTORS: dict[Family, int] = {"qwen2-vl": 28, "qwen2.5-vl": 28, "qwen3-vl": 32}  # patch size x spatial merge 2
PATCH_SIZES: dict[Family, int] = {"qwen2-vl": 14, "qwen2.5-vl": 14, "qwen3-vl": 16}
MIN_PIXELS = 3136  # 56 x 56, the processors' default floor
MAX_RATIO = 200  # the processors refuse more elongated images


def smart_resize(height: int, width: int, factor: int, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = 1_003_520) -> tuple[int, int]:
    """(height, width) with both sides multiples of `factor` and the area within [min_pixels, max_pixels],
    keeping the aspect ratio as closely as the Qwen-VL processors do."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"an aspect ratio above {MAX_RATIO} cannot be sent to a Qwen-VL model")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def sent_size(size: tuple[int, int], family: Family, max_pixels: int) -> tuple[int, int]:
    """The (width, height) an image or canvas of `size` is sent at: a fixed point of smart_resize."""
    height, width = smart_resize(size[1], size[0], FACTORS[family], max_pixels=max_pixels)
    return width, height


def prepare_image(image: Image.Image, family: Family, max_pixels: int) -> Image.Image:
    """The image as RGB at its sent size."""
    image = image.convert("RGB")
    size = sent_size(image.size, family, max_pixels)
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def png_data_url(image: Image.Image) -> str:
    """`data:image/png;base64,...` for an image_url content part."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

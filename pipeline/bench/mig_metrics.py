"""The pure arithmetic of the COCO-MIG benchmark (MIGC, CVPR 2024): box IoU, NMS, best match, HSV colour rule.

Everything here follows the benchmark's own evaluation script, ``eval_mig.py`` of LeyRio/MIG_Bench at commit
7f5da08 ("update code", 2024-03-03, the newest change to that file; README of limuloo/MIGC points to that repo
for COCO-MIG). Facts taken from it:

* IoU of two ``x0, y0, x1, y1`` boxes without the +1 pixel convention; an instance's IoU is the largest over
  all detections left after NMS (torchvision ``nms``, IoU threshold 0.8) of GroundingDINO's boxes.
* Position is right when that IoU is at least 0.5.
* Colour: SAM segments the instance's *layout* box (not the detection); the masked pixels are converted to
  OpenCV's 8-bit HSV (H in 0..180, S and V in 0..255) and counted inside the colour word's ranges (bounds
  inclusive, as ``cv2.inRange``; red has two hue ranges). The colour is right when at least 20% of the mask's
  pixels fall in range; an empty mask is a wrong colour. The table is the active one of that commit (the
  script keeps an older, commented-out table; see :data:`COLOUR_RANGES`).
* Instance success needs both. The instance's term in the benchmark's mIoU is 0 without a detection, the best
  IoU when that is under the threshold (the script returns it as is), 0 when the position is right but the
  colour wrong, and the best IoU when both are right; levels average these terms over all their instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
HsvBound = tuple[int, int, int]  # OpenCV 8-bit HSV: H 0..180, S 0..255, V 0..255

IOU_THRESHOLD = 0.5
NMS_THRESHOLD = 0.8
COLOUR_MIN_FRACTION = 0.2
COLOUR_SOURCE = "LeyRio/MIG_Bench eval_mig.py @ 7f5da08, check_on_image: color_dict (the active table)"

# Inclusive (lower, upper) bounds per colour word, OpenCV 8-bit HSV; a pixel matches a word in any of its ranges.
COLOUR_RANGES: dict[str, tuple[tuple[HsvBound, HsvBound], ...]] = {
    "red": (((0, 50, 70), (9, 255, 255)), ((159, 50, 70), (180, 255, 255))),
    "blue": (((90, 50, 70), (128, 255, 255)),),
    "yellow": (((25, 50, 70), (35, 255, 255)),),
    "green": (((36, 50, 70), (89, 255, 255)),),
    "black": (((0, 0, 0), (180, 255, 30)),),
    "white": (((0, 0, 221), (180, 43, 255)),),
    "brown": (((6, 43, 35), (25, 255, 255)),),
}


def _reciprocal_table(numerator: float) -> np.ndarray:
    """OpenCV's division table for 8-bit HSV: round(numerator / i) for i in 1..255, 0 at i = 0."""
    i = np.arange(256, dtype=np.float64)
    return np.concatenate([[0], np.rint(numerator / i[1:])]).astype(np.int64)


_HSV_SHIFT = 12
_SDIV_TABLE = _reciprocal_table(float(255 << _HSV_SHIFT))
_HDIV_TABLE = _reciprocal_table((180 << _HSV_SHIFT) / 6.0)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; 0 when the union has no area."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def nms(boxes: Sequence[Box], scores: Sequence[float], threshold: float = NMS_THRESHOLD) -> list[int]:
    """Greedy non-maximum suppression: indices kept, highest score first; a box goes when its IoU with a kept
    box is above `threshold` (the rule of torchvision.ops.nms)."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(box_iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def best_match(target: Box, boxes: Sequence[Box]) -> tuple[int | None, float]:
    """The index of the box with the largest IoU with `target` (first on ties) and that IoU; (None, 0.0) if none."""
    if not boxes:
        return None, 0.0
    ious = [box_iou(target, box) for box in boxes]
    index = int(np.argmax(ious))
    return index, ious[index]


def rgb_to_hsv_opencv(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB to uint8 HSV exactly as OpenCV's COLOR_RGB2HSV computes it for 8-bit images.

    V = max; S = 255 * (max - min) / max; H = 30 * hue in sixths of the circle (degrees / 2, 0..179), the max
    channel picking the sector with red before green before blue, grey pixels H = 0. OpenCV divides through
    rounded 12-bit fixed-point reciprocal tables and rounds half up; so does this, bit for bit.
    """
    c = rgb.astype(np.int64)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = c.max(axis=-1)
    diff = v - c.min(axis=-1)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV_TABLE[v] + half) >> _HSV_SHIFT
    numer = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (numer * _HDIV_TABLE[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def masked_hsv(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The OpenCV HSV values of the pixels of (H, W, 3) uint8 `rgb` where (H, W) `mask` is true: (N, 3) uint8."""
    return rgb_to_hsv_opencv(rgb[mask.astype(bool)][None])[0]


def colour_fraction(hsv: np.ndarray, colour: str) -> float:
    """The share of (N, 3) `hsv` pixels in one of `colour`'s ranges; 0.0 when there are none."""
    if colour not in COLOUR_RANGES:
        raise ValueError(f"no HSV range for colour {colour!r}; known: {', '.join(COLOUR_RANGES)}")
    if len(hsv) == 0:
        return 0.0
    pixels = hsv.astype(np.int64)
    inside = np.zeros(len(pixels), dtype=bool)
    for lower, upper in COLOUR_RANGES[colour]:
        inside |= np.all((pixels >= lower) & (pixels <= upper), axis=-1)
    return float(inside.mean())


def dominant_colour(hsv: np.ndarray) -> str | None:
    """The table's colour word covering most (N, 3) `hsv` pixels (first in table order on ties); None if none
    covers any. Not part of the benchmark's rule: it says which colour was drawn when the asked one was not."""
    fractions = {colour: colour_fraction(hsv, colour) for colour in COLOUR_RANGES}
    best = max(fractions, key=lambda colour: fractions[colour])
    return best if fractions[best] > 0 else None


@dataclass(frozen=True)
class Verdict:
    """The benchmark's verdict on one instance."""

    success: bool  # position right and colour right (or no colour asked)
    miou: float  # the instance's term in the benchmark's mIoU


def verdict(
    detected: bool, iou: float, colour_ok: bool | None, iou_threshold: float = IOU_THRESHOLD
) -> Verdict:
    """Apply the benchmark's success and mIoU rules (module docstring); colour_ok None means no colour asked."""
    if not detected:
        return Verdict(False, 0.0)
    if iou < iou_threshold:
        return Verdict(False, iou)
    if colour_ok is False:
        return Verdict(False, 0.0)
    return Verdict(True, iou)

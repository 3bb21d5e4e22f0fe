"""The scorer protocol: what any scorer (classical detector, GroundingDINO + SAM, CLIP, an MLLM judge) returns.

A scorer looks at one generated image and the item it was generated from, and returns one dict per instance
(in the item's order) and one dict for the whole image. Values are numbers, booleans, strings or None; the
report averages every number and boolean per level (None is left out of the mean). Two scorers used together
must not share a key. A score depends only on the image and the item, never on which process made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from .items import BenchItem

Value = float | int | bool | str | None


@dataclass
class ImageScore:
    """One scorer's verdict on one image."""

    instances: list[dict[str, Value]]  # one per item.instances, same order
    image: dict[str, Value] = field(default_factory=dict)  # whole-image values, e.g. a global CLIP score


class Scorer(Protocol):
    """Scores generated images of benchmark items."""

    name: str  # short, e.g. "shapes-detector", "grounding-dino-sam", "clip", "mllm-judge"

    def describe(self) -> dict[str, Any]:
        """What results.json records about this scorer: model ids, thresholds, rules."""
        ...

    def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
        """The scores of `image`, generated from `item.layout`."""
        ...

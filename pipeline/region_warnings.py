"""Warnings about regions that are valid but may not do what was meant (errors stay in `regions`).

`eligen preview`, `eligen generate` and the studio show the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import Layout
from .regions import PATCH


@dataclass(frozen=True)
class RegionWarning:
    """A warning about one entity's region: the field it is about and what to know."""

    field: str
    message: str


def region_warnings(layout: Layout, pixel_masks: list[np.ndarray], token_masks: np.ndarray, scale_factor: int
                    ) -> list[RegionWarning]:
    """A region smaller than one token (the model sees whole tokens), and regions sharing tokens (both prompts
    reach those tokens; allowed, but often a mistake)."""
    token_side = scale_factor * PATCH
    warnings = []
    for i, (entity, mask) in enumerate(zip(layout.entities, pixel_masks, strict=True)):
        area = int(mask.sum())
        if area < token_side * token_side:
            cells = int(token_masks[i].sum())
            warnings.append(RegionWarning(
                f"entities[{i}].{entity.region_kind}",
                f"the region covers {area} px, less than one {token_side}x{token_side}-px token; the model sees "
                f"it as {cells} whole token{'s' if cells != 1 else ''}"))
    for i in range(len(pixel_masks)):
        for j in range(i + 1, len(pixel_masks)):
            shared = int((token_masks[i] & token_masks[j]).sum())
            if shared:
                warnings.append(RegionWarning(
                    f"entities[{j}].{layout.entities[j].region_kind}",
                    f"shares {shared} token{'s' if shared != 1 else ''} with entities[{i}]: both prompts reach "
                    "them (allowed; regions may overlap)"))
    return warnings

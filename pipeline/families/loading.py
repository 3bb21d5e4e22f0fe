"""Loading a model as its family: the folder (or hub id) tells which."""

from __future__ import annotations

import torch

from ..devices import Offload, Quantize
from ..model_info import model_family
from .base import ModelFamily


def load_family(model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none",
                quantize: Quantize = "none", explicit_device: bool = True, transformer: str | None = None
                ) -> ModelFamily:
    """The model loaded by its family's loader, placed on `device` (or offloaded to it)."""
    family = model_family(model)
    if family.name == "flux":
        from .flux.family import FluxFamily

        return FluxFamily.load(model, device, dtype, offload, quantize, explicit_device, transformer)
    if family.name == "qwen-image":
        from .qwen_image.family import QwenImageFamily

        return QwenImageFamily.load(model, device, dtype, offload, quantize, explicit_device, transformer)
    raise AssertionError(f"no loader for the family {family.name}")

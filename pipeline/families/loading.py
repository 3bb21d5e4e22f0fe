"""Loading a model as its family: the folder (or hub id) tells which; and the family parts that are read before a
model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..adapter_input import IPAdapterError
from ..devices import Offload, Quantize
from ..model_info import ModelLoadError, model_family
from .base import ModelFamily
from .defaults import FamilyDefaults

if TYPE_CHECKING:
    from .flux.family import FluxFamily
    from .qwen_image.family import QwenImageFamily


def family_class(model: str) -> type[FluxFamily | QwenImageFamily]:
    """The loader of the model's family; importing it imports the diffusers and transformers code the family runs on
    (most of the start-up time of a small model), so a caller may do that apart from loading the weights."""
    family = model_family(model)
    if family.name == "flux":
        from .flux.family import FluxFamily

        return FluxFamily
    if family.name == "qwen-image":
        from .qwen_image.family import QwenImageFamily

        return QwenImageFamily
    raise ModelLoadError(f"{model}: eligen has no loader for the {family.name} family")


def load_family(model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none",
                quantize: Quantize = "none", explicit_device: bool = True, transformer: str | None = None
                ) -> ModelFamily:
    """The model loaded by its family's loader, placed on `device` (or offloaded to it)."""
    return family_class(model).load(model, device, dtype, offload, quantize, explicit_device, transformer)


def ip_adapter_format(family: FamilyDefaults, path: Path) -> str:
    """The format of an IP-Adapter file for a model of `family`, from its key names (the tensors are not read);
    an `IPAdapterError` when the family has no adapters or the file is of no format it loads."""
    if not family.ip_adapter_formats:
        raise IPAdapterError(f"IP-Adapters are not supported for {family.name} models")
    from .flux.ip_adapter import adapter_format  # the one family with adapters

    return adapter_format(path)

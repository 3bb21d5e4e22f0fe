"""Loading FLUX components through diffusers, on the chosen device, dtype and offload mode."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import FluxPipeline

from .model_info import ModelLoadError

Offload = Literal["none", "model", "sequential"]
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def pick_device(name: str | None = None) -> torch.device:
    """The named device, else CUDA, then MPS, then CPU."""
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device cuda was asked for, but torch sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device mps was asked for, but torch sees no MPS device")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The named dtype, else bfloat16 on accelerators and float32 on the CPU."""
    if name:
        if name not in DTYPES:
            raise ModelLoadError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[name]
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def load_flux(model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none") -> FluxPipeline:
    """A FluxPipeline from a diffusers folder or hub id, placed on `device` or offloaded to it."""
    try:
        pipe = FluxPipeline.from_pretrained(model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the FLUX model {model!r}: {exc}") from exc
    if offload == "none":
        return pipe.to(device)
    if device.type == "cpu":
        raise ModelLoadError(f"--offload {offload} moves weights between the CPU and a GPU; the device is the CPU")
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe

"""Devices, dtypes, quantisation and offloading: what every model family loads with (diffusers conventions)."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

from .model_info import ModelLoadError

Offload = Literal["none", "model", "sequential"]
Quantize = Literal["none", "nf4", "int8", "fp8"]
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


def transformer_quantization(quantize: Quantize, dtype: torch.dtype) -> Any:
    """The diffusers quantization config of the transformer (None for `none`)."""
    if quantize == "none":
        return None
    try:
        if quantize == "nf4":
            from diffusers import BitsAndBytesConfig

            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig() if quantize == "int8" else Float8WeightOnlyConfig())
    except ImportError as exc:
        package = "bitsandbytes" if quantize == "nf4" else "torchao"
        raise ModelLoadError(f"--quantize {quantize} needs the {package} package: pip install {package}") from exc


def quantization(quantize: Quantize, dtype: torch.dtype) -> Any:
    """A diffusers quantization config for the transformer (None for `none`)."""
    config = transformer_quantization(quantize, dtype)
    if config is None:
        return None
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={"transformer": config})


def place(pipe: Any, device: torch.device, offload: Offload) -> Any:
    """A loaded diffusers pipeline moved to `device`, or offloaded to it (model by model, or layer by layer)."""
    if offload == "none":
        return pipe.to(device)
    if device.type == "cpu":
        raise ModelLoadError(f"--offload {offload} moves weights between the CPU and a GPU; the device is the CPU")
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe


SMALL_MODEL_PARAMETERS = 50_000_000  # a transformer this small does too little work per op to share between threads


def pick_threads(requested: int | None, device: torch.device, transformer: torch.nn.Module) -> int | None:
    """The torch CPU threads to run a loaded model with, or None to leave torch's choice alone.

    `requested` (`--threads`) wins, then an `OMP_NUM_THREADS` in the environment (torch already follows it).
    Otherwise a small transformer on the CPU (the built-in shapes model, the test models) gets one thread: its
    matrices are so small that the threads spend more time waiting for each other than computing, and on a
    busy machine a thread that waits for a descheduled partner stalls the whole step (measured in
    docs/performance.md). Larger models and accelerators keep torch's default.
    """
    if requested is not None:
        return requested
    if "OMP_NUM_THREADS" in os.environ or device.type != "cpu":
        return None
    return 1 if sum(p.numel() for p in transformer.parameters()) < SMALL_MODEL_PARAMETERS else None


def use_threads(requested: int | None, device: torch.device, transformer: torch.nn.Module) -> None:
    """Set torch's CPU thread count as `pick_threads` chooses (nothing when it leaves the choice to torch)."""
    threads = pick_threads(requested, device, transformer)
    if threads is not None:
        torch.set_num_threads(threads)

"""Loading FLUX components through diffusers, on the chosen device, dtype and offload mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import FluxPipeline

from .hub import fetch
from .model_info import ModelLoadError, model_folder

Offload = Literal["none", "model", "sequential"]
Quantize = Literal["none", "nf4", "int8", "fp8"]
FULL_SIZE_LAYERS = 19  # FLUX.1-dev/schnell: 19 double-stream blocks, 12B parameters
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


def transformer_config(model: str) -> dict[str, Any]:
    """The transformer config of a local folder, or of a hub model (fetched first: clear errors for gated
    models, missing repos and an offline machine with an empty cache)."""
    if Path(model).is_dir():
        path = Path(model) / "transformer" / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{model} is not a diffusers FLUX folder: it has no transformer/config.json")
    else:
        fetch(model, "model_index.json")
        path = fetch(model, "transformer/config.json")
    return json.loads(path.read_text(encoding="utf-8"))


def check_device(model: str, config: dict[str, Any], device: torch.device, explicit: bool) -> None:
    """Refuse to run a full-size model on the CPU unless the CPU was asked for by name."""
    if device.type != "cpu" or explicit or config.get("num_layers", 0) < FULL_SIZE_LAYERS:
        return
    width = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = 2 * config["num_layers"] + config["num_single_layers"]
    billions = 12 * (width / 3072) ** 2 * blocks / (2 * 19 + 38)
    raise ModelLoadError(
        f"{model} is a full-size model (about {billions:.0f}B parameters) and no CUDA or MPS device was found; "
        f"on the CPU it needs about {billions * 4:.0f} GB of memory in fp32 and minutes per step. "
        f"Pass --device cpu to run it there anyway"
    )


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


def load_flux(
    model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none", quantize: Quantize = "none",
    explicit_device: bool = True, transformer: str | None = None,
) -> FluxPipeline:
    """A FluxPipeline from a diffusers folder, built-in name or hub id, placed on `device` or offloaded to it.

    `transformer`, a single-file checkpoint (local or `repo-id/path/in/repo.safetensors`), replaces the model's own
    transformer; its config and every other component still come from `model`.
    """
    model = model_folder(model)
    config = transformer_config(model)
    check_device(model, config, device, explicit_device)
    components = {}
    if transformer is not None:
        from .single_file import load_single_file_transformer

        components["transformer"] = load_single_file_transformer(transformer, model, config, dtype, quantize)
    try:
        pipe = FluxPipeline.from_pretrained(
            model, dtype=dtype, quantization_config=None if components else quantization(quantize, dtype), **components
        )
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

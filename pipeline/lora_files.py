"""Reading LoRA files, the same for every family: safetensors only (a pickle checkpoint is refused), and the alphas
that diffusers keeps in a file's header rather than as tensors. Each family's key reader (`families/*/lora.py`)
turns what is read here into deltas on its transformer's modules."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from .lora import LoraError
from .structured_text import load_json

# One LoRA tensor: "<module>.lora_down.weight", "<module>.lora_A[.default].weight", "<module>.alpha", ...
LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?:(?P<factor>lora_down|lora_up|lora_A|lora_B)(?:\.default)?\.weight|alpha)$")
DOWN_FACTORS = {"lora_down", "lora_A"}
PEFT_PREFIXES = ("transformer.", "base_model.model.")  # what a diffusers/peft file puts before the module names


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a LoRA ``.safetensors`` file; a `LoraError` naming the file when it is
    missing, not a safetensors file (pickle checkpoints are not loaded, for safety) or holds no tensors."""
    path = Path(path)
    if not path.is_file():
        raise LoraError("no such LoRA file", source=path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for malformed headers
        hint = (
            "; pickle checkpoints (.ckpt/.pt/.pth/.bin) are not loaded for safety, convert the file to safetensors"
            if path.suffix.lower() in {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
            else ""
        )
        raise LoraError(f"not a readable safetensors file ({error}){hint}", source=path) from error
    if not state_dict:
        raise LoraError("the file holds no tensors", source=path)
    return state_dict, metadata


def peft_alphas(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
                source: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Alpha keys for a peft-style file whose alphas live in diffusers' ``lora_adapter_metadata`` header.

    diffusers writes the adapter's LoraConfig as JSON (keys prefixed ``transformer.`` when saved from a
    pipeline) and does not store alphas as tensors; without them the scale would silently be 1.
    """
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = load_json(raw)
    except ValueError as exc:
        raise LoraError(f"its lora_adapter_metadata header is not readable JSON ({exc})", source=source) from None
    if not isinstance(config, dict):
        raise LoraError("its lora_adapter_metadata header is not a JSON mapping", source=source)
    if any(k.startswith("transformer.") for k in config):
        config = {k.removeprefix("transformer."): v for k, v in config.items() if k.startswith("transformer.")}
    if config.get("use_dora"):
        raise LoraError("DoRA adapters are not supported", source=source)
    if config.get("lora_alpha") is None:
        return {}
    pattern: Mapping[str, float] = config.get("alpha_pattern") or {}
    alphas: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = LORA_KEY.match(key)
        if match is None or match["factor"] not in DOWN_FACTORS or f"{match['module']}.alpha" in state_dict:
            continue
        module = next((match["module"].removeprefix(p) for p in PEFT_PREFIXES if match["module"].startswith(p)),
                      match["module"])
        alpha = float(config["lora_alpha"])
        for name, value in pattern.items():  # peft matches pattern keys against the end of the module name
            if re.fullmatch(rf"(.*\.)?(?:{name})", module):
                alpha = float(value)
                break
        if config.get("use_rslora"):  # scale alpha / sqrt(r), written as an equivalent alpha over r
            alpha *= math.sqrt(tensor.shape[0])
        alphas[f"{match['module']}.alpha"] = torch.tensor(alpha)
    return alphas

"""Tiny random-weight IP-Adapter files for a tiny FLUX model, in both formats, with their tiny image encoders.

``<out>/instantx/ip-adapter.bin`` is a torch-saved ``{"image_proj": ..., "ip_adapter": ...}`` dict with the key
names of InstantX/FLUX.1-dev-IP-Adapter (128 image tokens, one layer per dual and single block) and
``<out>/instantx/image_encoder/`` a SigLIP vision model at the real one's input size (384 px) but 48 wide;
``<out>/xlabs/ip_adapter.safetensors`` has XLabs-AI/flux-ip-adapter's key names (4 tokens, dual blocks only) and
``<out>/xlabs/image_encoder/`` a CLIP vision model with projection (32 px, embeddings 24 wide). They are read by the
same code as the real files; their effect on an image is noise.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import torch

from .tiny_folders import check_target, publish, quiet_transformers_progress

INSTANTX_TOKENS = 128  # as InstantX/FLUX.1-dev-IP-Adapter
XLABS_TOKENS = 4  # as XLabs-AI/flux-ip-adapter
SIGLIP_WIDTH, CLIP_EMBED = 48, 24


def _siglip() -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return SiglipVisionModel(SiglipVisionConfig(
        hidden_size=SIGLIP_WIDTH, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=384, patch_size=48))


def _clip() -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=CLIP_EMBED))


def _linear(rows: int, columns: int, bias: bool = True) -> dict[str, torch.Tensor]:
    layer = torch.nn.Linear(columns, rows, bias=bias)
    return {name: tensor.detach().clone() for name, tensor in layer.state_dict().items()}


def _layer_norm(width: int) -> dict[str, torch.Tensor]:
    return {"weight": 1 + 0.1 * torch.randn(width), "bias": 0.1 * torch.randn(width)}


def instantx_state(config: dict, embed_dim: int = SIGLIP_WIDTH) -> dict[str, dict[str, torch.Tensor]]:
    """InstantX's nested state dict at the sizes of a transformer config (random weights)."""
    width, inner = config["joint_attention_dim"], config["num_attention_heads"] * config["attention_head_dim"]
    image_proj = {**{f"proj.0.{k}": v for k, v in _linear(embed_dim * 2, embed_dim).items()},
                  **{f"proj.2.{k}": v for k, v in _linear(width * INSTANTX_TOKENS, embed_dim * 2).items()},
                  **{f"norm.{k}": v for k, v in _layer_norm(width).items()}}
    layers = config["num_layers"] + config["num_single_layers"]
    ip_adapter = {f"{i}.to_{kv}_ip.weight": _linear(inner, width, bias=False)["weight"]
                  for i in range(layers) for kv in "kv"}
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def xlabs_state(config: dict, embed_dim: int = CLIP_EMBED) -> dict[str, torch.Tensor]:
    """XLabs' flat state dict at the sizes of a transformer config (random weights)."""
    width, inner = config["joint_attention_dim"], config["num_attention_heads"] * config["attention_head_dim"]
    state = {f"ip_adapter_proj_model.proj.{k}": v for k, v in _linear(width * XLABS_TOKENS, embed_dim).items()}
    state |= {f"ip_adapter_proj_model.norm.{k}": v for k, v in _layer_norm(width).items()}
    for i in range(config["num_layers"]):
        for kv in "kv":
            for name, tensor in _linear(inner, width).items():
                state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.{name}"] = tensor
    return state


def build_tiny_ip_adapters(out_dir: str | Path, model_folder: str | Path, *, seed: int = 0) -> Path:
    """Write both tiny adapters and their encoders for the FLUX model folder `model_folder` into `out_dir` (which
    must not exist or be empty; built in a temporary sibling and renamed into place). Returns its absolute path."""
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser().absolute()
    check_target(out)
    config = json.loads((Path(model_folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            instantx, siglip = instantx_state(config), _siglip()
            xlabs, clip = xlabs_state(config), _clip()
        (tmp / "instantx").mkdir(parents=True)
        (tmp / "xlabs").mkdir()
        torch.save(instantx, tmp / "instantx" / "ip-adapter.bin")
        save_file(xlabs, str(tmp / "xlabs" / "ip_adapter.safetensors"))
        with quiet_transformers_progress():
            siglip.save_pretrained(tmp / "instantx" / "image_encoder")
            clip.save_pretrained(tmp / "xlabs" / "image_encoder")
        publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out

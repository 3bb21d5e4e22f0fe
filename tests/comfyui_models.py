"""ComfyUI's own FLUX.1 and Qwen-Image model classes holding the weights of eligen's tiny model folders.

ComfyUI detects a checkpoint's config from hard-coded full-size numbers (FLUX: 3072 wide, 24 heads), so the tiny
configs are given here, read from the folders' transformer config; the weights go through ComfyUI's own
diffusers -> ComfyUI key conversion (FLUX) or load as they are (Qwen-Image: ComfyUI keeps diffusers' names).
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import torch
from safetensors.torch import load_file


def _folder(model: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((model / "transformer" / "config.json").read_text())
    return config, load_file(model / "transformer" / "diffusion_pytorch_model.safetensors")


def _patcher(model_config, state_dict: dict[str, torch.Tensor]) -> comfy.model_patcher.ModelPatcher:
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(state_dict, "")
    missing, unexpected = model.diffusion_model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise AssertionError(f"weights do not fit ComfyUI's model: missing {missing}, unexpected {unexpected}")
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def comfy_flux(model: Path) -> comfy.model_patcher.ModelPatcher:
    """ComfyUI's FLUX (comfy.model_base.Flux) with the tiny folder's transformer weights, float32 on the CPU."""
    config, weights = _folder(model)
    converted = comfy.model_detection.convert_diffusers_mmdit(weights, "")
    axes = list(config["axes_dims_rope"])
    channels = config["in_channels"] // 4  # FLUX packs 2x2 latent pixels
    unet = {"image_model": "flux", "in_channels": channels, "out_channels": channels, "patch_size": 2,
            "vec_in_dim": config["pooled_projection_dim"], "context_in_dim": config["joint_attention_dim"],
            "hidden_size": config["num_attention_heads"] * config["attention_head_dim"], "mlp_ratio": 4.0,
            "num_heads": config["num_attention_heads"], "depth": config["num_layers"],
            "depth_single_blocks": config["num_single_layers"], "axes_dim": axes, "theta": 10000, "qkv_bias": True,
            "guidance_embed": config["guidance_embeds"]}
    return _patcher(comfy.supported_models.Flux(unet), converted)


def comfy_qwen_image(model: Path) -> comfy.model_patcher.ModelPatcher:
    """ComfyUI's Qwen-Image (comfy.model_base.QwenImage) with the tiny folder's transformer weights."""
    config, weights = _folder(model)
    unet = {"image_model": "qwen_image", "patch_size": config["patch_size"], "in_channels": config["in_channels"],
            "out_channels": config["out_channels"], "num_layers": config["num_layers"],
            "attention_head_dim": config["attention_head_dim"],
            "num_attention_heads": config["num_attention_heads"],
            "joint_attention_dim": config["joint_attention_dim"], "axes_dims_rope": tuple(config["axes_dims_rope"])}
    return _patcher(comfy.supported_models.QwenImage(unet), weights)

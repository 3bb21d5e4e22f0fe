"""The Qwen-Image family on diffusers: Qwen2.5-VL prompt groups at their true lengths, 2x2-packed latents of
`AutoencoderKLQwenImage`, per-group text rotary positions (see `encode.py` and `transformer.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import QwenImagePipeline
from PIL import Image

from ...devices import Offload, Quantize
from ...lora import LoraDelta
from ...model_info import ModelLoadError
from ...sampler import pack, unpack
from ..base import Velocity
from ..defaults import QWEN_IMAGE
from ..diffusers_family import DiffusersFamily
from .encode import PromptEncoder, qwen_text_ids
from .load import load_qwen_image
from .lora import load_lora
from .transformer import predict


class QwenImageFamily(DiffusersFamily):
    """A loaded Qwen-Image model (Qwen/Qwen-Image, tiny test models): what EliGen needs from it."""

    defaults = QWEN_IMAGE

    pipe: QwenImagePipeline

    @classmethod
    def load(cls, model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none",
             quantize: Quantize = "none", explicit_device: bool = True, transformer: str | None = None
             ) -> QwenImageFamily:
        """A Qwen-Image diffusers folder or hub id (see `load_qwen_image`); single-file transformers are FLUX's."""
        if transformer is not None:
            raise ModelLoadError("a single-file transformer (--transformer) is read for FLUX models only")
        return cls(load_qwen_image(model, device, dtype, offload, quantize, explicit_device))

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel (8 for Qwen-Image)."""
        return self.pipe.vae_scale_factor

    def prompt_encoder(self, max_sequence_length: int) -> PromptEncoder:
        global_length = self.defaults.prompt_sequence_length or max_sequence_length
        return PromptEncoder(self.pipe, max_sequence_length, global_length)

    text_ids = staticmethod(qwen_text_ids)

    def velocity(self, transformer: torch.nn.Module, latent_height: int, latent_width: int,
                 guidance: float | None) -> Velocity:
        """`predict` on this latent grid (Qwen-Image has no embedded guidance: `guidance` is unused)."""

        def velocity(x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
            return predict(transformer, x, timestep, cond, latent_height, latent_width)

        return velocity

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        return mean, std

    @torch.inference_mode()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """The posterior mode, normalised `(x - mean) / std` as the reference encodes (diffusers' inpainting
        pipeline draws a sample instead)."""
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image.convert("RGB")).to(self.device, vae.dtype)
        latents = vae.encode(pixels[:, :, None]).latent_dist.mode()
        mean, std = self._latent_statistics(latents)
        return pack(((latents - mean) / std)[:, :, 0]).to(self.dtype)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, latent_height: int, latent_width: int) -> Image.Image:
        """`x * std + mean`, then the VAE's first frame, as QwenImagePipeline decodes."""
        vae = self.pipe.vae
        latents = unpack(tokens, latent_height, latent_width)[:, :, None].to(vae.dtype)
        mean, std = self._latent_statistics(latents)
        # `x * std` written as QwenImagePipeline computes it (divided by its `latents_std = 1 / std`): the two round
        # differently in the last bit, and this form decodes to diffusers' pixels exactly
        image = vae.decode(latents / (1.0 / std) + mean, return_dict=False)[0][:, :, 0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")[0]

    def load_lora(self, path: str | Path) -> list[LoraDelta]:
        return load_lora(path, self.pipe.transformer)

    def drop_text_encoders(self) -> None:
        self.pipe.text_encoder = None

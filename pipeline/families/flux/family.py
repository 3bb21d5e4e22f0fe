"""The FLUX family on diffusers: T5 prompt groups with CLIP's pooled vector, 2x2-packed latents, zero text ids."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import FluxPipeline
from PIL import Image

from ...devices import Offload, Quantize
from ...lora import LoraDelta
from ...sampler import pack, unpack
from ..base import Velocity
from ..defaults import FLUX
from ..diffusers_family import DiffusersFamily
from .attention import joint_qkv
from .encode import PromptEncoder, flux_text_ids
from .load import load_flux
from .lora import load_lora
from .transformer import image_ids, predict, use_rotary_cache

if TYPE_CHECKING:
    from .ip_adapter import ImagePrompt


class FluxFamily(DiffusersFamily):
    """A loaded FLUX.1 model (FLUX.1-dev, schnell, tiny test models): what EliGen needs from it."""

    defaults = FLUX
    attention_qkv = staticmethod(joint_qkv)

    pipe: FluxPipeline

    @classmethod
    def load(cls, model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none",
             quantize: Quantize = "none", explicit_device: bool = True, transformer: str | None = None) -> FluxFamily:
        """A FLUX diffusers folder, built-in name or hub id (see `load_flux`)."""
        return cls(load_flux(model, device, dtype, offload, quantize, explicit_device, transformer))

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel (8 for FLUX.1-dev)."""
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def prompt_encoder(self, max_sequence_length: int) -> PromptEncoder:
        return PromptEncoder(self.pipe, max_sequence_length)

    text_ids = staticmethod(flux_text_ids)

    def velocity(self, transformer: torch.nn.Module, latent_height: int, latent_width: int,
                 guidance: float | None) -> Velocity:
        """`predict` on this latent grid; FLUX's embedded guidance where the model has a guidance embedder."""
        ids = image_ids(latent_height, latent_width, self.device, self.dtype)
        use_rotary_cache(self.pipe.transformer)
        g = None
        if guidance is not None and self.pipe.transformer.config.guidance_embeds:
            g = torch.full((1,), guidance, device=self.device, dtype=torch.float32)

        def velocity(x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
            return predict(transformer, x, timestep, cond, ids, g)

        return velocity

    @torch.inference_mode()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image.convert("RGB")).to(self.device, self.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        return pack((latents - vae.config.shift_factor) * vae.config.scaling_factor)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, latent_height: int, latent_width: int) -> Image.Image:
        vae = self.pipe.vae
        latents = unpack(tokens, latent_height, latent_width)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")[0]

    def load_lora(self, path: str | Path) -> list[LoraDelta]:
        return load_lora(path, self.pipe.transformer.config)

    def load_ip_adapter(self, path: Path, image_encoder: str | None, base_dir: Path = Path(".")) -> ImagePrompt:
        """An IP-Adapter file (InstantX or XLabs format) with its image encoder, installed in the transformer."""
        from .ip_adapter import load_image_prompt

        return load_image_prompt(path, image_encoder, self.pipe.transformer, self.dtype, self.device, base_dir)

    def drop_text_encoders(self) -> None:
        self.pipe.text_encoder = None
        self.pipe.text_encoder_2 = None

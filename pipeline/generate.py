"""Layout -> image: the EliGen generation pipeline on diffusers FLUX components."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import FluxPipeline
from PIL import Image

from . import model_info
from .attention_backends import Attention
from .encode import Conditioning, PromptEncoder, conditioning
from .hub import DEFAULT_LORAS, lora_file
from .layout import Layout, LayoutError, LoraSpec
from .layout_warnings import warn_truncated
from .lora import LoraError, apply_loras, load_lora, remove_loras
from .model_defaults import with_model_defaults
from .models import Offload, Quantize, load_flux, pick_device, pick_dtype
from .regions import check_canvas, entity_masks, token_masks
from .sampler import Fuse, StepCallback, denoise, get_noise, get_schedule, image_ids, pack, unpack

EntityTokens = Literal["max", "auto"] | int  # a layout's `entity_tokens`


def entity_lengths(
    encode: PromptEncoder, budget: EntityTokens, prompts: list[str], field: str | None = None,
    source: str = "<layout>",
) -> list[int]:
    """T5 tokens kept of each entity prompt's padded encoding: all (`max`, the reference), the prompt's own with
    its end token (`auto`), or N, which must hold every prompt."""
    if budget == "max":
        return [encode.max_sequence_length] * len(prompts)
    counts = [encode.token_count(p) for p in prompts]
    if budget == "auto":
        return counts
    if budget > encode.max_sequence_length:
        raise LayoutError(source, "entity_tokens",
                          f"expected at most max_sequence_length ({encode.max_sequence_length}), got {budget}")
    for i, n in enumerate(counts):
        if n > budget:
            raise LayoutError(source, field or f"entities[{i}].prompt",
                              f"expected at most {budget} T5 tokens (entity_tokens), got {n} with the end token",
                              "shorten the prompt, or raise entity_tokens (or use auto)")
    return [budget] * len(prompts)


class EligenPipeline:
    """A loaded FLUX model that renders layouts with entity-level regional attention."""

    def __init__(self, flux: FluxPipeline, model: str, fuse_loras: bool = False) -> None:
        self.flux = flux
        self.model = model
        self.fuse_loras = fuse_loras
        self._loras: tuple[tuple[str, float], ...] = ()  # (file, scale) of the LoRAs now applied

    @classmethod
    def from_pretrained(
        cls, model: str, *, transformer: str | None = None, device: str | None = None, dtype: str | None = None,
        offload: Offload = "none", quantize: Quantize = "none", fuse_loras: bool = False,
    ) -> EligenPipeline:
        """Load a diffusers FLUX folder or hub id (`black-forest-labs/FLUX.1-dev`).

        `transformer` replaces the model's transformer with a single-file checkpoint (a local .safetensors file in
        the BFL or diffusers key layout, or `repo-id/path/in/repo.safetensors`); its config and every other
        component come from `model`.
        `quantize` loads the transformer quantised (nf4: bitsandbytes; int8, fp8: torchao weight-only);
        `fuse_loras` merges LoRAs into the weights (faster steps; then one set of LoRAs per loaded model).
        A full-size model is refused on the CPU unless `device="cpu"` is given explicitly.
        """
        target = pick_device(device)
        flux = load_flux(model, target, pick_dtype(dtype, target), offload, quantize, explicit_device=bool(device),
                         transformer=transformer)
        return cls(flux, model, fuse_loras)

    def lora_specs(self, layout: Layout) -> list[LoraSpec]:
        """The layout's LoRAs, or this model's default ones when the layout does not say."""
        return DEFAULT_LORAS.get(self.model, []) if layout.loras is None else layout.loras

    def use_loras(self, specs: list[LoraSpec], base_dir: Path = Path("."), source: str = "<layout>") -> None:
        """Make exactly these LoRAs active on the transformer (a no-op when they already are)."""
        files = [(lora_file(s, base_dir, source, f"loras[{i}]"), s.scale) for i, s in enumerate(specs)]
        wanted = tuple((str(path), scale) for path, scale in files)
        if wanted == self._loras:
            return
        transformer = self.flux.transformer
        if self.fuse_loras and self._loras:
            raise LoraError("LoRAs were fused into this model's weights and cannot be swapped; load the model again")
        loaded = [(load_lora(path, transformer.config), scale) for path, scale in files]
        remove_loras(transformer)
        apply_loras(transformer, loaded, fuse=self.fuse_loras)
        self._loras = wanted

    def prepare(
        self, layout: Layout, base_dir: Path = Path("."), source: str = "<layout>", regions: np.ndarray | None = None
    ) -> tuple[Conditioning, Conditioning | None]:
        """Everything a layout needs before sampling: its LoRAs applied, its regions and prompts encoded."""
        self.use_loras(self.lora_specs(layout), base_dir, source)
        if regions is None:
            regions = self.token_regions(layout, base_dir, source)
        return self.conditionings(layout, regions, source)

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel (8 for FLUX.1-dev)."""
        return 2 ** (len(self.flux.vae.config.block_out_channels) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.flux.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.flux._execution_device

    def max_sequence_length(self, layout: Layout) -> int:
        """The layout's T5 length per prompt group, else the model folder's default."""
        return layout.max_sequence_length or model_info.default_max_sequence_length(self.model)

    def token_regions(self, layout: Layout, base_dir: Path, source: str = "<layout>") -> np.ndarray:
        """(k, n_tokens) bool token regions of the layout's entities, validated for this model."""
        check_canvas(layout, self.scale_factor, source)
        return token_masks(entity_masks(layout, base_dir, source), self.scale_factor, layout, source)

    def conditionings(
        self, layout: Layout, regions: np.ndarray, source: str = "<layout>"
    ) -> tuple[Conditioning, Conditioning | None]:
        """Positive and negative conditioning, encoded once for every seed of the layout."""
        encode = PromptEncoder(self.flux, self.max_sequence_length(layout))
        warn_truncated(layout, encode.untruncated_count, encode.max_sequence_length, "T5", source)
        warn_truncated(layout, encode.clip_untruncated_count, encode.clip_max_length, "CLIP", source, ("prompt",))
        prompts = [e.prompt for e in layout.entities]
        token_regions = torch.from_numpy(regions) if prompts else None
        lengths = entity_lengths(encode, layout.entity_tokens, prompts, source=source)
        positive = conditioning(encode, layout.prompt, prompts, token_regions, lengths)
        if layout.cfg <= 1.0:
            return positive, None
        if layout.regions_on_negative and prompts:
            negatives = [layout.negative_prompt] * len(prompts)
            negative = conditioning(encode, layout.negative_prompt, negatives, token_regions,
                                    entity_lengths(encode, layout.entity_tokens, negatives, "negative_prompt", source))
        else:
            negative = conditioning(encode, layout.negative_prompt, [], None)
        return positive, negative

    def sample(
        self, layout: Layout, positive: Conditioning, negative: Conditioning | None, seed: int,
        on_step: StepCallback | None = None, fuse_positive: Fuse | None = None, fuse_negative: Fuse | None = None,
        attention: Attention | None = None, batch_cfg: bool = False,
    ) -> torch.Tensor:
        """Denoised packed latents for one seed (with inpainting fusion when `fuse_*` are given).

        `attention` (default: the layout's) picks how the regional mask runs (`attention_backends`); `batch_cfg`
        runs CFG's two branches as one batched pass.
        """
        transformer = self.flux.transformer
        latent_h, latent_w = layout.height // self.scale_factor, layout.width // self.scale_factor
        channels = transformer.config.in_channels // 4
        x = pack(get_noise(seed, channels, latent_h, latent_w, self.dtype)).to(self.device)
        ids = image_ids(latent_h, latent_w, self.device, self.dtype)
        sigmas, timesteps = get_schedule(layout.schedule, layout.steps, x.shape[1], self.flux.scheduler.config)
        guidance = layout.guidance if transformer.config.guidance_embeds else None
        return denoise(transformer, x, ids, sigmas, timesteps, positive, negative, layout.cfg, guidance, on_step,
                       fuse_positive, fuse_negative, attention or layout.attention, batch_cfg)

    @torch.inference_mode()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB image (at a size the model takes) -> packed, scaled latents (the VAE posterior mean)."""
        vae = self.flux.vae
        pixels = self.flux.image_processor.preprocess(image.convert("RGB")).to(self.device, self.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        return pack((latents - vae.config.shift_factor) * vae.config.scaling_factor)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, layout: Layout) -> Image.Image:
        """Packed latents -> PIL image through the VAE."""
        vae = self.flux.vae
        latents = unpack(tokens, layout.height // self.scale_factor, layout.width // self.scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self.flux.image_processor.postprocess(image, output_type="pil")[0]

    def generate(
        self, layout: Layout, seeds: list[int], base_dir: Path = Path("."), source: str = "<layout>",
        on_step: StepCallback | None = None,
    ) -> list[Image.Image]:
        """One image per seed for a validated layout (mask and LoRA paths resolve against `base_dir`); what the
        layout leaves out of size, steps and cfg comes from this model's declared defaults (`model_defaults`)."""
        layout = with_model_defaults(layout, self.model)
        positive, negative = self.prepare(layout, base_dir, source)
        return [self.decode(self.sample(layout, positive, negative, seed, on_step), layout) for seed in seeds]

"""Layout -> image: the EliGen generation pipeline, the same for every model family (`families/`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import model_info
from .attention_backends import Attention
from .conditioning import Conditioning, conditioning
from .devices import Offload, Quantize, pick_device, pick_dtype
from .entity_lora import EntityLoras, with_entity_tokens
from .entity_tokens import entity_lengths
from .families.base import ModelFamily, PromptEncoder
from .families.loading import load_family
from .hub import DEFAULT_LORAS, lora_file
from .layout import Layout, LayoutError, LoraSpec
from .layout_warnings import warn_truncated
from .lora import LoraError, apply_loras, remove_loras
from .references import ImagePrompt, check_references, load_image_prompt, with_references
from .regions import check_canvas, entity_masks, token_masks
from .render import render
from .sampler import Fuse, Schedule, StepCallback, denoise, get_noise, get_schedule, pack


class EligenPipeline:
    """A loaded model of any family that renders layouts with entity-level regional attention."""

    def __init__(self, family: ModelFamily, model: str, fuse_loras: bool = False) -> None:
        self.family = family
        self.model = model
        self.fuse_loras = fuse_loras
        self._loras: tuple[tuple[str, float], ...] = ()  # (file, scale) of the LoRAs now applied
        self._entity_loras = EntityLoras()  # the entities' own LoRAs, each file loaded once
        self._image_prompt: tuple[tuple[str, str | None], ImagePrompt] | None = None  # (file, encoder), adapter

    @classmethod
    def from_pretrained(
        cls, model: str, *, transformer: str | None = None, device: str | None = None, dtype: str | None = None,
        offload: Offload = "none", quantize: Quantize = "none", fuse_loras: bool = False,
    ) -> EligenPipeline:
        """Load a diffusers folder, built-in name or hub id (`black-forest-labs/FLUX.1-dev`) as its family.

        `transformer` replaces the model's transformer with a single-file checkpoint (a local .safetensors file in
        the BFL or diffusers key layout, or `repo-id/path/in/repo.safetensors`); its config and every other
        component come from `model`.
        `quantize` loads the transformer quantised (nf4: bitsandbytes; int8, fp8: torchao weight-only);
        `fuse_loras` merges LoRAs into the weights (faster steps; then one set of LoRAs per loaded model).
        A full-size model is refused on the CPU unless `device="cpu"` is given explicitly.
        """
        target = pick_device(device)
        family = load_family(model, target, pick_dtype(dtype, target), offload, quantize,
                             explicit_device=bool(device), transformer=transformer)
        return cls(family, model, fuse_loras)

    @property
    def transformer(self) -> torch.nn.Module:
        return self.family.transformer

    def lora_specs(self, layout: Layout) -> list[LoraSpec]:
        """The layout's LoRAs, or this model's default ones when the layout does not say."""
        return DEFAULT_LORAS.get(self.model, []) if layout.loras is None else layout.loras

    def use_loras(self, specs: list[LoraSpec], base_dir: Path = Path("."), source: str = "<layout>") -> None:
        """Make exactly these LoRAs active on the transformer (a no-op when they already are)."""
        files = [(lora_file(s, base_dir, source, f"loras[{i}]"), s.scale) for i, s in enumerate(specs)]
        wanted = tuple((str(path), scale) for path, scale in files)
        if wanted == self._loras:
            return
        if self.fuse_loras and self._loras:
            raise LoraError("LoRAs were fused into this model's weights and cannot be swapped; load the model again")
        loaded = [(self.family.load_lora(path), scale) for path, scale in files]
        remove_loras(self.transformer)
        apply_loras(self.transformer, loaded, fuse=self.fuse_loras)
        self._loras = wanted

    def prepare(
        self, layout: Layout, base_dir: Path = Path("."), source: str = "<layout>", regions: np.ndarray | None = None
    ) -> tuple[Conditioning, Conditioning | None]:
        """Everything a layout needs before sampling: its LoRAs applied, its regions and prompts encoded."""
        forms = ("auto", *self.family.defaults.attention_forms)
        if layout.attention not in forms:
            raise LayoutError(source, "attention", f"expected one of {', '.join(forms)} for a "
                              f"{self.family.defaults.name} model, got {layout.attention}")
        if layout.steps < 2 and self.family.scheduler_config.get("shift_terminal"):
            raise LayoutError(source, "steps", "expected at least 2 steps: this model's schedule is stretched to end "
                              "at its shift_terminal, which one step cannot (diffusers and the reference give NaN)")
        entity_weights = self._entity_loras.use(self.transformer, self.family.load_lora, layout, base_dir, source,
                                                self.fuse_loras)
        self.use_loras(self.lora_specs(layout), base_dir, source)
        if regions is None:
            regions = self.token_regions(layout, base_dir, source)
        positive, negative = with_entity_tokens(*self.conditionings(layout, regions, source), regions, entity_weights)
        return self.with_references(layout, regions, positive, negative, base_dir, source)

    def with_references(
        self, layout: Layout, regions: np.ndarray, positive: Conditioning, negative: Conditioning | None,
        base_dir: Path = Path("."), source: str = "<layout>",
    ) -> tuple[Conditioning, Conditioning | None]:
        """The branches with the layout's IP-Adapter references (`references`); the adapter is loaded once."""
        spec = layout.ip_adapter
        if spec is None:
            return positive, negative
        check_references(layout, base_dir, source)
        key = (str((base_dir / spec.path).resolve()), spec.image_encoder)
        if self._image_prompt is None or self._image_prompt[0] != key:
            self._image_prompt = key, load_image_prompt(self.family, spec, base_dir, source)
        latent_h, latent_w = self.latent_grid(layout)
        n_image = (latent_h // 2) * (latent_w // 2)
        return with_references(self._image_prompt[1], layout, regions, n_image, positive, negative, base_dir, source)

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel (8 for FLUX.1-dev)."""
        return self.family.scale_factor

    @property
    def dtype(self) -> torch.dtype:
        return self.family.dtype

    @property
    def device(self) -> torch.device:
        return self.family.device

    def max_sequence_length(self, layout: Layout, source: str = "<layout>") -> int:
        """The layout's text length per prompt group (at most the family's), else the model folder's default."""
        cap = self.family.defaults.max_sequence_length
        if layout.max_sequence_length is not None and layout.max_sequence_length > cap:
            raise LayoutError(source, "max_sequence_length",
                              f"expected at most {cap} for a {self.family.defaults.name} model, "
                              f"got {layout.max_sequence_length}")
        return layout.max_sequence_length or model_info.default_max_sequence_length(self.model)

    def prompt_encoder(self, max_sequence_length: int) -> PromptEncoder:
        """The family's encoder of prompt groups at this length per group."""
        return self.family.prompt_encoder(max_sequence_length)

    def token_regions(self, layout: Layout, base_dir: Path, source: str = "<layout>") -> np.ndarray:
        """(k, n_tokens) bool token regions of the layout's entities, validated for this model."""
        check_canvas(layout, self.scale_factor, source)
        return token_masks(entity_masks(layout, base_dir, source), self.scale_factor, layout, source)

    def conditionings(
        self, layout: Layout, regions: np.ndarray, source: str = "<layout>"
    ) -> tuple[Conditioning, Conditioning | None]:
        """Positive and negative conditioning, encoded once for every seed of the layout."""
        encode = self.prompt_encoder(self.max_sequence_length(layout, source))
        for limit in encode.token_limits():
            warn_truncated(layout, limit.count, limit.limit, limit.encoder, source, limit.fields)
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

    def latent_grid(self, layout: Layout) -> tuple[int, int]:
        """(height, width) of the layout's latents."""
        return layout.height // self.scale_factor, layout.width // self.scale_factor

    def sample(
        self, layout: Layout, positive: Conditioning, negative: Conditioning | None, seed: int,
        on_step: StepCallback | None = None, fuse_positive: Fuse | None = None, fuse_negative: Fuse | None = None,
        attention: Attention | None = None, batch_cfg: bool = False,
    ) -> torch.Tensor:
        """Denoised packed latents for one seed (with inpainting fusion when `fuse_*` are given).

        `attention` (default: the layout's) picks how the regional mask runs (`attention_backends`); `batch_cfg`
        runs CFG's two branches as one batched pass.
        """
        latent_h, latent_w = self.latent_grid(layout)
        x = pack(get_noise(seed, self.family.latent_channels, latent_h, latent_w, self.dtype)).to(self.device)
        sigmas, timesteps = get_schedule(self.schedule(layout), layout.steps, x.shape[1],
                                         self.family.scheduler_config)
        velocity = self.family.velocity(self.transformer, latent_h, latent_w, layout.guidance)
        return denoise(velocity, x, sigmas, timesteps, positive, negative, layout.cfg, on_step,
                       fuse_positive, fuse_negative, attention or layout.attention, batch_cfg, layout.cfg_rescale)

    def schedule(self, layout: Layout) -> Schedule:
        """The sampler's schedule for the layout's: `scheduler` and `shift3` as named; `reference` (the reference
        implementation's) is the family's `reference_schedule`: the static shift 3 for FLUX, the scheduler config for
        Qwen-Image, whose reference uses it too."""
        if layout.schedule == "reference":
            return self.family.defaults.reference_schedule
        return layout.schedule

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB image (at a size the model takes) -> packed, scaled latents (the VAE posterior mean)."""
        return self.family.encode_image(image)

    def decode(self, tokens: torch.Tensor, layout: Layout) -> Image.Image:
        """Packed latents -> PIL image through the VAE."""
        return self.family.decode(tokens, *self.latent_grid(layout))

    def generate(
        self, layout: Layout, seeds: list[int], base_dir: Path = Path("."), source: str = "<layout>",
        on_step: StepCallback | None = None,
    ) -> list[Image.Image]:
        """One image per seed for a validated layout (mask and LoRA paths resolve against `base_dir`): the images of
        `render.render`, which applies the model's defaults (`model_defaults`) and also gives each image's
        metadata."""
        return [r.image for r in render(self, layout, seeds, base_dir=base_dir, source=source, on_step=on_step)]

"""What each model family defaults to, and which family a model is, without loading it (no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyDefaults:
    """A family's native settings: what a layout and a model folder that say nothing get."""

    name: str
    pipeline_class: str  # `_class_name` in a diffusers folder's model_index.json
    max_sequence_length: int  # text tokens per prompt group
    scale_factor: int  # pixels per latent pixel (the VAE's)


FLUX = FamilyDefaults(name="flux", pipeline_class="FluxPipeline", max_sequence_length=512, scale_factor=8)
FAMILIES = {family.name: family for family in (FLUX,)}


def family_for_class(pipeline_class: str | None) -> FamilyDefaults:
    """The family of a diffusers pipeline class name (a folder without model_index.json, or of another class,
    is taken for FLUX: the loader then says what it could not load)."""
    return next((f for f in FAMILIES.values() if f.pipeline_class == pipeline_class), FLUX)

"""What each model family defaults to, and which family a model is, without loading it (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FamilyDefaults:
    """A family's native settings: what a layout and a model folder that say nothing get.

    `steps`, `cfg`, `size` and `negative_prompt` are the family's native sampling settings (FLUX: the EliGen paper's
    and the layout format's defaults; Qwen-Image: the reference's EliGen examples and diffusers' pipeline).
    """

    name: str
    pipeline_class: str  # `_class_name` in a diffusers folder's model_index.json
    max_sequence_length: int  # text tokens per prompt group (the default, and the family's cap)
    scale_factor: int  # pixels per latent pixel (the VAE's)
    # Text tokens the global (and negative) prompt's group reads, where the family reads it at another length than the
    # entity prompts (Qwen-Image: 4096); None: `max_sequence_length`, as every group (FLUX's T5)
    prompt_sequence_length: int | None = None
    hub_ids: tuple[str, ...] = ()  # hub models known to be of this family (no download needed to tell)
    steps: int = 50
    cfg: float = 3.0
    size: tuple[int, int] = (1024, 1024)
    negative_prompt: str = ""
    lora_rank: int = 64  # rank of a trained LoRA when none is asked for
    # The sampler's schedule (`sampler.Schedule`) a layout's `schedule: reference` (the reference's schedule) means
    # for this family: FLUX's reference uses a static shift of 3 (`shift3`); Qwen-Image's reference uses the same
    # schedule as diffusers, from the model's scheduler config (`scheduler`).
    reference_schedule: Literal["shift3", "scheduler"] = "shift3"
    # The training sigmas of the reference's trainer for this family (`train.loss.reference_timesteps`): FLUX's static
    # shift 3, or Qwen-Image's own schedule (exponential shift, mu 0.8, ending at 0.02)
    reference_training: Literal["shift3", "qwen-image"] = "shift3"
    attention_forms: tuple[str, ...] = ("dense", "flex", "split")  # how its regional mask can run
    # Module paths inside each block a trained LoRA adapts; None: every Linear of every block (the paper's choice)
    lora_targets: tuple[str, ...] | None = None
    lora_exports: tuple[str, ...] = ("kohya",)  # key styles `eligen train --export` writes for this family
    ip_adapter_formats: tuple[str, ...] = ()  # IP-Adapter file formats the family loads (none: no `ip_adapter`)


FLUX = FamilyDefaults(name="flux", pipeline_class="FluxPipeline", max_sequence_length=512, scale_factor=8,
                      hub_ids=("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"),
                      ip_adapter_formats=("instantx", "xlabs"))
# Qwen-Image: 40 steps, cfg 4, 1024x1024 as the reference's EliGen-V2 example (its pipeline defaults to 30 steps at
# 1328x1328; diffusers' QwenImagePipeline to 50 steps at 1024x1024 with true_cfg_scale 4 and the negative prompt " "
# in its examples); entity prompts up to 1024 tokens and the global and negative prompts up to 4096, as the reference's
# entity unit and prompt embedder (diffusers' QwenImagePipeline cuts every prompt at 1024); rank 32 as the reference's
# EliGen recipe.
# The reference's EliGen training recipe (examples/qwen_image/model_training/lora/Qwen-Image-EliGen.sh)
QWEN_IMAGE_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                           "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out", "img_mlp.net.2", "img_mod.1",
                           "txt_mlp.net.2", "txt_mod.1")
QWEN_IMAGE = FamilyDefaults(name="qwen-image", pipeline_class="QwenImagePipeline", max_sequence_length=1024,
                            prompt_sequence_length=4096, scale_factor=8, hub_ids=("Qwen/Qwen-Image",), steps=40,
                            cfg=4.0, size=(1024, 1024),
                            negative_prompt=" ", lora_rank=32, reference_schedule="scheduler",
                            reference_training="qwen-image",
                            attention_forms=("dense", "split"), lora_targets=QWEN_IMAGE_LORA_TARGETS,
                            lora_exports=("diffsynth",))
FAMILIES = {family.name: family for family in (FLUX, QWEN_IMAGE)}


class UnknownFamilyError(ValueError):
    """A model's pipeline class is none of the families eligen knows."""


def family_for_class(pipeline_class: str | None, model: str = "the model") -> FamilyDefaults:
    """The family of a diffusers pipeline class name (`_class_name` in model_index.json); None (a folder without
    one) is taken for FLUX, and the loader then says what it could not load. Any other class is an error."""
    if pipeline_class is None:
        return FLUX
    found = next((f for f in FAMILIES.values() if f.pipeline_class == pipeline_class), None)
    if found is None:
        known = ", ".join(f"{f.pipeline_class} ({f.name})" for f in FAMILIES.values())
        raise UnknownFamilyError(f"{model} is a {pipeline_class} model (model_index.json); eligen runs {known}")
    return found


def family_for_hub_id(model: str) -> FamilyDefaults | None:
    """The family of a hub id in the table of known ones (no download needed), else None."""
    return next((f for f in FAMILIES.values() if model in f.hub_ids), None)

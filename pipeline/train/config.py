"""Every option of `eligen train`, validated in one place (command line and YAML config file alike).

No torch here: `eligen --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ..layout import DEFAULT_MODEL, LayoutError

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
TimestepSampling = Literal["reference", "logit-normal"]
MixedPrecision = Literal["no", "bf16", "fp16"]
WeightDtype = Literal["bf16", "fp16", "fp32"]
SaveDtype = Literal["fp32", "bf16"]
ExportStyle = Literal["kohya", "diffsynth"]
LrSchedule = Literal["constant", "cosine"]
PATH_KEYS = ("data", "output", "validation", "cache_dir", "deepspeed")  # relative to a config file's folder


class TrainConfig(BaseModel):
    """Options of a training run. Each field's description is its `--help` text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path = Field(description="Dataset folder with metadata.jsonl, or a metadata .jsonl / .json file.")
    output: Path | None = Field(None, description="Output folder (lora.safetensors or transformer/, checkpoints/, "
                                "validation/, log.jsonl). Required except with --check.")
    model: str = Field(DEFAULT_MODEL, description="Diffusers FLUX or Qwen-Image folder, hub id or built-in name to "
                       "train on.")
    steps: PositiveInt = Field(1000, description="Optimizer steps.")
    stop_at: PositiveInt | None = Field(None, description="Stop after this step with a checkpoint (and no final "
                                        "weights), to continue later with --resume latest; the learning-rate "
                                        "schedule still runs to --steps.")
    batch_size: PositiveInt = Field(1, description="Samples per process per micro-batch.")
    grad_accum: PositiveInt = Field(1, description="Micro-batches per optimizer step.")
    rank: PositiveInt | None = Field(None, description="LoRA rank [default: the family's, 64 for FLUX, 32 for "
                                     "Qwen-Image as the reference's recipe].")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale alpha/rank) [default: the rank].")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: NonNegativeFloat = Field(0.01, description="AdamW weight decay.")
    warmup_steps: NonNegativeInt = Field(0, description="Linear learning-rate warmup steps.")
    lr_schedule: LrSchedule = Field("constant", description="Learning rate after the warmup: constant, or cosine "
                                    "decay to 0 at the last step.")
    max_grad_norm: float | None = Field(None, gt=0, description="Clip gradients to this norm [default: no clipping].")
    full: bool = Field(False, description="Fine-tune the whole transformer instead of a LoRA.")
    resolution: PositiveInt = Field(1024, description="Training side: each image is resized to about resolution^2 "
                                    "pixels at its own aspect ratio.")
    bucket_step: PositiveInt = Field(64, description="Bucket sides are multiples of this (px); images sharing a "
                                     "bucket share batches.")
    max_sequence_length: int | None = Field(None, ge=1, le=1024, description="Text tokens per prompt group "
                                            "(Qwen-Image: per entity prompt; its global prompt reads up to 4096) "
                                            "[default: the model's, 512 for FLUX.1-dev, 1024 for Qwen-Image].")
    timesteps: TimestepSampling = Field("reference", description="reference: uniform over the reference "
                                        "trainer's 1000 sigmas for the model's family (FLUX: shift 3; Qwen-Image: "
                                        "exponential shift mu 0.8 to 0.02) with its Gaussian loss weight; "
                                        "logit-normal: weight 1.")
    timestep_shift: float = Field(1.0, gt=0, description="With --timesteps logit-normal: shift each drawn t to "
                                  "shift*t / (1 + (shift-1)*t), towards high noise for shift > 1 (the sampler's "
                                  "static shift, so training can favour the noise levels a model samples at).")
    entity_dropout: Fraction = Field(0.0, description="Fraction of samples trained without their entities (plain "
                                     "FLUX, no mask).")
    caption_dropout: Fraction = Field(0.0, description="Fraction of samples trained with the empty prompt and no "
                                      "entities (the branch true CFG subtracts), for a model trained from scratch.")
    cache: bool = Field(False, description="Precompute text embeddings and VAE latents once (then the text encoders "
                        "leave memory).")
    cache_dir: Path | None = Field(None, description="Where --cache keeps its files [default: OUTPUT/cache].")
    gradient_checkpointing: bool = Field(True, description="Recompute block activations in the backward pass.")
    mixed_precision: MixedPrecision | None = Field(
        None, description="Autocast precision [default: bf16 on a GPU, no on the CPU].")
    dtype: WeightDtype | None = Field(
        None, description="Dtype of the frozen weights [default: bf16 on a GPU, fp32 on the CPU].")
    device: str | None = Field(None, description="cuda or cpu [default: the process's accelerator device].")
    seed: NonNegativeInt = Field(0, description="Seed of the LoRA init, data order, noise and timesteps.")
    save_every: NonNegativeInt = Field(500, description="Write a checkpoint every N steps (0: only at the end).")
    keep_checkpoints: NonNegativeInt = Field(3, description="Keep the newest N checkpoints (0: keep all).")
    resume: str | None = Field(None, description="Continue from a checkpoint folder, or `latest` in OUTPUT.")
    validate_every: NonNegativeInt = Field(0, description="Write a validation grid every N steps (0: only at the "
                                           "end, when validation layouts are given).")
    validation: Path | None = Field(None, description="Validation layouts: a layout YAML file or a folder of them.")
    holdout: NonNegativeInt = Field(0, description="Hold the last N dataset lines out of training and validate on "
                                    "them.")
    export: ExportStyle | None = Field(None, description="Also write the LoRA in another key style: kohya "
                                       "(FLUX, OUTPUT/lora_kohya.safetensors) or diffsynth (Qwen-Image, the released "
                                       "EliGen LoRAs' style, OUTPUT/lora_diffsynth.safetensors).")
    save_dtype: SaveDtype = Field("fp32", description="Dtype of the saved LoRA or transformer.")
    num_workers: NonNegativeInt = Field(2, description="Data-loading worker processes per training process.")
    num_processes: PositiveInt = Field(1, description="Training processes; more than 1 spawns them through "
                                       "accelerate's launcher (one per GPU).")
    deepspeed: Path | None = Field(None, description="DeepSpeed config JSON (e.g. recipes/deepspeed_zero2.json), "
                                   "passed to accelerate's launcher.")

    @field_validator("timestep_shift")
    @classmethod
    def _shift_needs_logit_normal(cls, shift: float, info: ValidationInfo) -> float:
        if shift != 1.0 and info.data.get("timesteps") != "logit-normal":
            raise ValueError("applies to timesteps: logit-normal only (the reference draws its family's own sigmas)")
        return shift

    def lora_rank(self, family_rank: int) -> int:
        """The rank asked for, else the model family's."""
        return self.rank if self.rank is not None else family_rank

    def lora_alpha(self, family_rank: int) -> float:
        """The alpha asked for, else the rank (scale 1)."""
        return self.alpha if self.alpha is not None else float(self.lora_rank(family_rank))


def config_keys() -> list[str]:
    """The option names, as in a YAML config file."""
    return list(TrainConfig.model_fields)


def parse_config(data: dict[str, Any], source: str, cli_keys: frozenset[str] = frozenset()) -> TrainConfig:
    """Validate merged options; an error names `source` (or the option, when it came from the command line)."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "(top level)"
        key = str(error["loc"][0]) if error["loc"] else ""
        where = f"--{key.replace('_', '-')} on the command line" if key in cli_keys else source
        if error["type"] == "extra_forbidden":
            raise LayoutError(where, field, "unknown option", f"known options: {', '.join(config_keys())}") from None
        if error["type"] == "missing":
            raise LayoutError(where, field, "this option is required") from None
        message = error["msg"].removeprefix("Value error, ")
        raise LayoutError(where, field, f"{message[0].lower()}{message[1:]}, got {error.get('input')!r}") from None

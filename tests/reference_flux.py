"""The authors' reference FLUX DiT (`diffsynth`) at a tiny size, with weights from a diffusers transformer.

`diffsynth.models.flux_dit.FluxDiT.__init__` hard-codes FLUX.1-dev's size (width 3072, 24 heads,
38 single blocks, T5 width 4096, CLIP width 768). `TinyFluxDiT` builds the same attributes from the
reference's own block classes at a given size and inherits every method (patchify, image ids,
`construct_mask`, `process_entity_masks`), so the reference's forward (`model_fn_flux_image`) runs on
it unchanged. Weights come from a diffusers `FluxTransformer2DModel` through the reference's own
converter, `FluxDiTStateDictConverterFromDiffusers`, whose final-norm scale/shift swap hard-codes
3072 rows: for other widths it leaves the rows in diffusers' (scale, shift) order, so the swap is
redone here for the model's width.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from diffsynth.models.flux_dit import (
    AdaLayerNormContinuous,
    FluxDiT,
    FluxJointTransformerBlock,
    FluxSingleTransformerBlock,
    RoPEEmbedding,
)
from diffsynth.models.general_modules import TimestepEmbeddings
from diffsynth.pipelines.flux_image import FluxImagePipeline, FluxImageUnit_EntityControl, FluxImageUnit_PromptEmbedder
from diffsynth.utils.state_dict_converters.flux_dit import FluxDiTStateDictConverterFromDiffusers
from diffusers import FluxTransformer2DModel

from eligen.pipeline.families.flux.encode import PromptEncoder

FINAL_NORM = "final_norm_out.linear"


class TinyFluxDiT(FluxDiT):
    """`FluxDiT` with the sizes of a diffusers config instead of FLUX.1-dev's (same attributes, same order)."""

    def __init__(
        self, *, dim: int, heads: int, num_blocks: int, num_single_blocks: int, axes_dim: list[int],
        context_dim: int, pooled_dim: int, input_dim: int = 64, guidance: bool = True,
    ) -> None:
        torch.nn.Module.__init__(self)
        self.pos_embedder = RoPEEmbedding(dim, 10000, list(axes_dim))
        self.time_embedder = TimestepEmbeddings(256, dim)
        self.guidance_embedder = TimestepEmbeddings(256, dim) if guidance else None
        self.pooled_text_embedder = torch.nn.Sequential(
            torch.nn.Linear(pooled_dim, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim)
        )
        self.context_embedder = torch.nn.Linear(context_dim, dim)
        self.x_embedder = torch.nn.Linear(input_dim, dim)
        self.blocks = torch.nn.ModuleList([FluxJointTransformerBlock(dim, heads) for _ in range(num_blocks)])
        self.single_blocks = torch.nn.ModuleList(
            [FluxSingleTransformerBlock(dim, heads) for _ in range(num_single_blocks)]
        )
        self.final_norm_out = AdaLayerNormContinuous(dim)
        self.final_proj_out = torch.nn.Linear(dim, 64)
        self.input_dim = input_dim

    @classmethod
    def from_diffusers(cls, transformer: FluxTransformer2DModel) -> TinyFluxDiT:
        """The reference DiT holding `transformer`'s weights, converted by the reference's own converter."""
        config = transformer.config
        dim = config.num_attention_heads * config.attention_head_dim
        model = cls(
            dim=dim, heads=config.num_attention_heads, num_blocks=config.num_layers,
            num_single_blocks=config.num_single_layers, axes_dim=list(config.axes_dims_rope),
            context_dim=config.joint_attention_dim, pooled_dim=config.pooled_projection_dim,
            input_dim=config.in_channels, guidance=config.guidance_embeds,
        )
        source = {name: tensor.detach().clone() for name, tensor in transformer.state_dict().items()}
        state = FluxDiTStateDictConverterFromDiffusers(source)
        for suffix in ("weight", "bias"):
            rows = source[f"norm_out.linear.{suffix}"]  # diffusers order: (scale, shift); reference: (shift, scale)
            state[f"{FINAL_NORM}.{suffix}"] = torch.cat([rows[dim:], rows[:dim]])
        model.load_state_dict(state, strict=True)
        return model.to(transformer.dtype).eval()


def parameter_patterns(module: torch.nn.Module) -> set[str]:
    """Names of the module's parameters and buffers with block indices replaced by `*`."""
    return {re.sub(r"^(blocks|single_blocks)\.\d+\.", r"\1.*.", name) for name in module.state_dict()}


def full_size_parameter_patterns() -> set[str]:
    """`parameter_patterns` of the reference's own full-size `FluxDiT`, built on the meta device (no memory)."""
    with torch.device("meta"):
        return parameter_patterns(FluxDiT())


@contextlib.contextmanager
def diffusers_conditioning_order(dit: FluxDiT, guidance: float) -> Iterator[None]:
    """Make the reference sum its conditioning vector in diffusers' order while inside the block.

    The reference (`model_fn_flux_image`) adds `(time + pooled) + guidance`; diffusers'
    `CombinedTimestepGuidanceTextProjEmbeddings` adds `(time + guidance) + pooled`. Float addition is
    not associative, so the two differ by an ulp in the conditioning vector. Inside this block the
    guidance embedding (computed once, exactly as the reference computes it) is added to the time
    embedding and the guidance embedder returns zeros, so the reference computes
    `((time + guidance) + pooled) + 0`, bit for bit diffusers' sum; everything else is untouched.
    """
    assert dit.guidance_embedder is not None
    dtype = next(dit.parameters()).dtype
    with torch.no_grad():
        embedded = dit.guidance_embedder(torch.tensor([guidance], dtype=dtype) * 1000, dtype)
    hooks = [
        dit.time_embedder.register_forward_hook(lambda module, args, out: out + embedded),
        dit.guidance_embedder.register_forward_hook(lambda module, args, out: torch.zeros_like(out)),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


class EntityUnit(FluxImageUnit_EntityControl):
    """The reference's EliGen unit with its text encoders replaced by ours (the same embeddings on both sides)."""

    def __init__(self, encode: PromptEncoder) -> None:
        super().__init__()
        self.encode = encode

    def encode_prompt(self, tokenizer_1, tokenizer_2, text_encoder_1, text_encoder_2, prompt, positive=True,
                      device="cpu", t5_sequence_length=512):
        assert t5_sequence_length == self.encode.max_sequence_length
        prompts = [prompt] if isinstance(prompt, str) else prompt
        t5 = torch.cat([self.encode(p)[0] for p in prompts])
        pooled = torch.cat([self.encode(p)[1] for p in prompts])
        return t5, pooled, torch.zeros(t5.shape[0], t5.shape[1], 3, dtype=t5.dtype, device=t5.device)


class PromptUnit(FluxImageUnit_PromptEmbedder):
    """The reference's prompt unit with its text encoders replaced by ours."""

    def __init__(self, encode: PromptEncoder) -> None:
        super().__init__()
        self.encode = encode

    def process(self, pipe, prompt, t5_sequence_length, positive) -> dict:
        assert t5_sequence_length == self.encode.max_sequence_length
        t5, pooled = self.encode(prompt)
        return {"prompt_emb": t5, "pooled_prompt_emb": pooled,
                "text_ids": torch.zeros(1, t5.shape[1], 3, dtype=t5.dtype, device=t5.device)}


def reference_pipeline(dit: TinyFluxDiT, encode: PromptEncoder, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> FluxImagePipeline:
    """The reference pipeline (default: on the CPU in float32) holding `dit`, with our text encoders in its units."""
    pipe = FluxImagePipeline(device=str(device), torch_dtype=dtype)
    pipe.dit = dit
    replaced = {FluxImageUnit_PromptEmbedder: PromptUnit, FluxImageUnit_EntityControl: EntityUnit}
    pipe.units = [replaced[type(unit)](encode) if type(unit) in replaced else unit for unit in pipe.units]
    assert sum(isinstance(unit, PromptUnit | EntityUnit) for unit in pipe.units) == 2
    return pipe

"""The layers of a FLUX transformer under the three naming conventions in use (LoRA and
checkpoint files come in all three; docs/models.md).

* BFL: black-forest-labs' original checkpoints (`double_blocks.0.img_attn.qkv`); kohya LoRA files use the
  same names with `_` for `.` (`lora_unet_double_blocks_0_img_attn_qkv`).
* the reference implementation, diffsynth (`blocks.0.attn.a_to_qkv`);
* diffusers' `FluxTransformer2DModel` (`transformer_blocks.0.attn.to_q`, `.to_k`, `.to_v`).

A fused BFL/reference layer stacks its diffusers parts' rows in the order listed. Single-file checkpoints
(single_file.py here) and LoRA files (pipeline/lora.py) are both mapped through these tables.
"""

from __future__ import annotations

# (BFL name, reference name, diffusers modules in the fused layer's row order), per double-stream block
DOUBLE_BLOCK_LINEARS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("img_attn.qkv", "attn.a_to_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", "attn.b_to_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("img_attn.proj", "attn.a_to_out", ("attn.to_out.0",)),
    ("txt_attn.proj", "attn.b_to_out", ("attn.to_add_out",)),
    ("img_mlp.0", "ff_a.0", ("ff.net.0.proj",)),
    ("img_mlp.2", "ff_a.2", ("ff.net.2",)),
    ("txt_mlp.0", "ff_b.0", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", "ff_b.2", ("ff_context.net.2",)),
    ("img_mod.lin", "norm1_a.linear", ("norm1.linear",)),
    ("txt_mod.lin", "norm1_b.linear", ("norm1_context.linear",)),
)
# per single-stream block; linear1 rows are q, k, v (inner_dim each), then the MLP input
SINGLE_BLOCK_LINEARS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("linear1", "to_qkv_mlp", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", "proj_out", ("proj_out",)),
    ("modulation.lin", "norm.linear", ("norm.linear",)),
)
# outside the blocks (the guidance embedder exists only where the config has `guidance_embeds`)
GLOBAL_LINEARS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("img_in", "x_embedder", ("x_embedder",)),
    ("txt_in", "context_embedder", ("context_embedder",)),
    ("time_in.in_layer", "time_embedder.timestep_embedder.0", ("time_text_embed.timestep_embedder.linear_1",)),
    ("time_in.out_layer", "time_embedder.timestep_embedder.2", ("time_text_embed.timestep_embedder.linear_2",)),
    ("vector_in.in_layer", "pooled_text_embedder.0", ("time_text_embed.text_embedder.linear_1",)),
    ("vector_in.out_layer", "pooled_text_embedder.2", ("time_text_embed.text_embedder.linear_2",)),
    ("guidance_in.in_layer", "guidance_embedder.timestep_embedder.0", ("time_text_embed.guidance_embedder.linear_1",)),
    ("guidance_in.out_layer", "guidance_embedder.timestep_embedder.2", ("time_text_embed.guidance_embedder.linear_2",)),
    ("final_layer.linear", "final_proj_out", ("proj_out",)),
    ("final_layer.adaLN_modulation.1", "final_norm_out.linear", ("norm_out.linear",)),
)
# RMS norms of queries and keys (BFL `.scale` is diffusers' `.weight`); not LoRA targets
DOUBLE_BLOCK_NORMS: tuple[tuple[str, str], ...] = (
    ("img_attn.norm.query_norm", "attn.norm_q"),
    ("img_attn.norm.key_norm", "attn.norm_k"),
    ("txt_attn.norm.query_norm", "attn.norm_added_q"),
    ("txt_attn.norm.key_norm", "attn.norm_added_k"),
)
SINGLE_BLOCK_NORMS: tuple[tuple[str, str], ...] = (
    ("norm.query_norm", "attn.norm_q"),
    ("norm.key_norm", "attn.norm_k"),
)
# diffusers modules whose output rows are (scale, shift), where BFL and the reference have (shift, scale)
SHIFT_SCALE_SWAPPED = frozenset({"norm_out.linear"})


def kohya_stem(bfl_name: str) -> str:
    """The kohya LoRA stem of a BFL layer name: `img_attn.qkv` -> `img_attn_qkv`."""
    return bfl_name.replace(".", "_")

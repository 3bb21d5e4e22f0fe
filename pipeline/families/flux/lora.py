"""LoRA files for FLUX transformers (diffusers ``FluxTransformer2DModel``): key styles to `LoraDelta`s.

Three key styles are read, and the style is detected from the keys:

* ``"kohya"``: kohya / BFL names, ``lora_unet_double_blocks_{i}_img_attn_qkv.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``. ComfyUI's dotted form (``diffusion_model.double_blocks.0.img_attn.qkv``,
  with ``lora_down``/``lora_up`` or ``lora_A``/``lora_B``) and kohya keys that carry diffusers module names
  (``lora_transformer_transformer_blocks_0_attn_to_q``) are read as this style too.
* ``"native"``: the reference implementation's (DiffSynth's) names,
  ``blocks.{i}.attn.a_to_qkv.lora_A.default.weight`` (also without ``.default``),
  ``single_blocks.{j}.to_qkv_mlp``.
* ``"peft"``: diffusers / peft names, ``transformer.transformer_blocks.{i}.attn.to_q.lora_A.weight``, with or
  without the ``transformer.`` prefix, optionally with ``.alpha`` keys.

Every style is turned into per-module :class:`LoraDelta` s, sized from the transformer's config, so the same
code serves FLUX.1-dev and tiny test models. A LoRA on a fused source layer (img/txt ``qkv``, the single
block's ``linear1`` = q, k, v, proj_mlp) splits exactly: every part gets the whole A and its own row slice
of B. The final layer's adaLN modulation emits (shift, scale) in BFL and reference order but (scale, shift) in
diffusers, so its B rows are swapped; the per-block modulations have the same row order everywhere.
The deltas are applied by the shared ``pipeline/lora.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ...lora import MAX_LISTED, LoraDelta, LoraError
from ...lora_files import DOWN_FACTORS, LORA_KEY, PEFT_PREFIXES, peft_alphas, read_lora_file
from .names import (
    DOUBLE_BLOCK_LINEARS,
    GLOBAL_LINEARS,
    SHIFT_SCALE_SWAPPED,
    SINGLE_BLOCK_LINEARS,
    kohya_stem,
)

LoraStyle = Literal["kohya", "native", "peft"]

# One LoRA tensor: "<module>.lora_down.weight", "<module>.lora_A[.default].weight", "<module>.alpha", ...

# Key prefixes that tell the style. x_embedder / context_embedder have the same name in the reference and in
# diffusers and do not vote.
_TEXT_ENCODER_PREFIXES = (
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "text_encoder.",
    "text_encoder_2.",
    "text_encoders.",
)
_STYLE_PREFIXES: tuple[tuple[LoraStyle, tuple[str, ...]], ...] = (
    ("kohya", ("lora_unet_", "lora_transformer_", "diffusion_model.")),
    (
        "native",
        (
            "blocks.",
            "single_blocks.",
            "time_embedder.",
            "guidance_embedder.",
            "pooled_text_embedder.",
            "final_norm_out.",
            "final_proj_out.",
        ),
    ),
    (
        "peft",
        (
            "transformer.",
            "base_model.model.",
            "transformer_blocks.",
            "single_transformer_blocks.",
            "time_text_embed.",
            "norm_out.",
            "proj_out.",
        ),
    ),
)
_NEUTRAL_PREFIXES = ("x_embedder.", "context_embedder.")

@dataclass(frozen=True)
class _Source:
    """Where one source layer of a LoRA file goes: diffusers modules in row order, each with its row count."""

    parts: tuple[tuple[str, int], ...]
    in_features: int
    swap_shift_scale: bool = False


def _flux_linears(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Every Linear of a FluxTransformer2DModel with this config: name -> (out_features, in_features)."""
    missing = [
        k for k in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads") if k not in config
    ]
    if missing:
        raise LoraError("the transformer config lacks entries needed to size the LoRA", keys=missing)
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    mlp = int(inner * 4.0)  # FluxSingleTransformerBlock's mlp_ratio and FeedForward's mult, both 4 in diffusers
    in_channels = int(config.get("in_channels", 64))
    out_channels = int(config.get("out_channels") or in_channels)
    patch = int(config.get("patch_size", 1))

    linears: dict[str, tuple[int, int]] = {}
    for i in range(int(config["num_layers"])):
        block = f"transformer_blocks.{i}"
        for name in (
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "to_add_out",
        ):
            linears[f"{block}.attn.{name}"] = (inner, inner)
        for ff in ("ff", "ff_context"):
            linears[f"{block}.{ff}.net.0.proj"] = (mlp, inner)
            linears[f"{block}.{ff}.net.2"] = (inner, mlp)
        linears[f"{block}.norm1.linear"] = (6 * inner, inner)
        linears[f"{block}.norm1_context.linear"] = (6 * inner, inner)
    for j in range(int(config["num_single_layers"])):
        block = f"single_transformer_blocks.{j}"
        for name in ("attn.to_q", "attn.to_k", "attn.to_v"):
            linears[f"{block}.{name}"] = (inner, inner)
        linears[f"{block}.proj_mlp"] = (mlp, inner)
        linears[f"{block}.proj_out"] = (inner, inner + mlp)
        linears[f"{block}.norm.linear"] = (3 * inner, inner)
    linears["x_embedder"] = (inner, in_channels)
    linears["context_embedder"] = (inner, int(config.get("joint_attention_dim", 4096)))
    embedders = ["timestep_embedder"] + (["guidance_embedder"] if config.get("guidance_embeds", False) else [])
    for embedder in embedders:
        linears[f"time_text_embed.{embedder}.linear_1"] = (inner, 256)  # sinusoidal timestep features
        linears[f"time_text_embed.{embedder}.linear_2"] = (inner, inner)
    linears["time_text_embed.text_embedder.linear_1"] = (inner, int(config.get("pooled_projection_dim", 768)))
    linears["time_text_embed.text_embedder.linear_2"] = (inner, inner)
    linears["norm_out.linear"] = (2 * inner, inner)
    linears["proj_out"] = (patch * patch * out_channels, inner)
    return linears


def _sources(style: LoraStyle, linears: Mapping[str, tuple[int, int]]) -> dict[str, _Source]:
    """Source module name (as written in a file of this style) -> where it goes in the diffusers model."""

    def source(*modules: str, swap: bool = False) -> _Source | None:
        if not all(m in linears for m in modules):
            return None  # e.g. guidance_in on a model without a guidance embedder
        return _Source(tuple((m, linears[m][0]) for m in modules), linears[modules[0]][1], swap)

    if style == "peft":
        return {name: _Source(((name, shape[0]),), shape[1]) for name, shape in linears.items()}

    table: dict[str, _Source | None] = {}
    num_double = sum(1 for m in linears if m.startswith("transformer_blocks.") and m.endswith(".attn.to_q"))
    num_single = sum(1 for m in linears if m.startswith("single_transformer_blocks.") and m.endswith(".attn.to_q"))
    for i in range(num_double):
        for bfl, native, parts in DOUBLE_BLOCK_LINEARS:
            name = f"lora_unet_double_blocks_{i}_{kohya_stem(bfl)}" if style == "kohya" else f"blocks.{i}.{native}"
            table[name] = source(*(f"transformer_blocks.{i}.{p}" for p in parts))
    for j in range(num_single):
        for bfl, native, parts in SINGLE_BLOCK_LINEARS:
            stem = kohya_stem(bfl)
            name = f"lora_unet_single_blocks_{j}_{stem}" if style == "kohya" else f"single_blocks.{j}.{native}"
            table[name] = source(*(f"single_transformer_blocks.{j}.{p}" for p in parts))
    for bfl, native, (module,) in GLOBAL_LINEARS:
        name = f"lora_unet_{kohya_stem(bfl)}" if style == "kohya" else native
        table[name] = source(module, swap=module in SHIFT_SCALE_SWAPPED)
    if style == "kohya":  # kohya keys that carry flattened diffusers names
        for module in linears:
            table["lora_transformer_" + module.replace(".", "_")] = source(module)
    return {name: src for name, src in table.items() if src is not None}


def _key_style(key: str) -> LoraStyle | Literal["neutral", "text_encoder"] | None:
    if key.startswith(_TEXT_ENCODER_PREFIXES):
        return "text_encoder"
    for style, prefixes in _STYLE_PREFIXES:
        if key.startswith(prefixes):
            return style
    if key.startswith(_NEUTRAL_PREFIXES):
        return "neutral"
    return None


def detect_style(keys: Iterable[str]) -> LoraStyle:
    """Tell the key style of a FLUX LoRA state dict: ``"kohya"``, ``"native"`` (reference) or ``"peft"``.

    Keys of an unknown form do not vote (:func:`lora_deltas` reports them as unmatched); text-encoder keys
    do not vote either. Raises :class:`LoraError` when keys of several styles are mixed, or when no key
    shows a known style.
    """
    examples: dict[str, str] = {}
    neutral = False
    keys = list(keys)
    for key in keys:
        style = _key_style(key)
        if style in ("kohya", "native", "peft"):
            examples.setdefault(style, key)
        neutral = neutral or style == "neutral"
    if len(examples) > 1:
        raise LoraError(
            "the LoRA mixes key styles " + ", ".join(sorted(examples)) + "; one file must use one style",
            keys=[f"{style}: {key}" for style, key in sorted(examples.items())],
        )
    if examples:
        return next(iter(examples))  # type: ignore[return-value]
    if neutral:
        return "peft"  # only x_embedder / context_embedder: same names in the reference and diffusers
    raise LoraError(
        "unknown LoRA key style (expected kohya 'lora_unet_...', reference 'blocks.N...' or diffusers "
        "'transformer.transformer_blocks.N...' keys)",
        keys=keys[:MAX_LISTED],
    )


def _source_name(style: LoraStyle, module: str) -> str:
    """A key's module part, normalised to the names of :func:`_sources`."""
    if style == "kohya" and module.startswith("diffusion_model."):
        return "lora_unet_" + module.removeprefix("diffusion_model.").replace(".", "_")
    if style == "peft":
        for prefix in PEFT_PREFIXES:
            if module.startswith(prefix):
                return module.removeprefix(prefix)
    return module


def lora_deltas(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    source: str | Path | None = None,
    skip_text_encoder: bool = False,
) -> list[LoraDelta]:
    """Convert a LoRA state dict of any supported style to per-module deltas, sized from the model config.

    Args:
        state_dict: the LoRA tensors (kohya, reference or diffusers/peft keys, see the module docstring).
        config: the transformer's config (``transformer.config`` or a plain dict with the same entries).
        source: the file the state dict came from, named in error messages.
        skip_text_encoder: drop text-encoder keys (``lora_te*``, ``text_encoder.*``) instead of raising.

    Returns:
        One :class:`LoraDelta` per diffusers Linear touched, fused source layers split into their parts.

    Raises:
        LoraError: mixed or unknown key styles; keys that match no layer of this model (a block index
        beyond the config's, a missing ``up`` or ``down``, a non-LoRA tensor such as DoRA or bias terms);
        factors whose shapes do not fit the target layer. Nothing is returned partially.
    """
    style = detect_style(state_dict.keys())
    table = _sources(style, _flux_linears(config))

    unmatched: list[str] = []
    groups: dict[str, dict[str, str]] = {}
    for key in state_dict:
        if _key_style(key) == "text_encoder":
            if not skip_text_encoder:
                unmatched.append(key)
            continue
        match = LORA_KEY.match(key)
        name = _source_name(style, match["module"]) if match else None
        if match is None or name not in table:
            unmatched.append(key)
            continue
        role = "alpha" if match["factor"] is None else "down" if match["factor"] in DOWN_FACTORS else "up"
        group = groups.setdefault(name, {})
        if role in group:  # e.g. both lora_A.weight and lora_A.default.weight
            unmatched.append(key)
        else:
            group[role] = key
    for group in groups.values():
        if "down" not in group or "up" not in group:
            unmatched.extend(group.values())
    if unmatched:
        hint = (
            " (text-encoder keys are not loaded; pass skip_text_encoder=True to drop them)"
            if any(_key_style(k) == "text_encoder" for k in unmatched)
            else ""
        )
        raise LoraError(
            f"{len(unmatched)} key(s) of this {style}-style LoRA match no layer of the transformer{hint}",
            keys=sorted(unmatched),
            source=source,
        )

    deltas: list[LoraDelta] = []
    bad_shapes: list[str] = []
    for name, group in groups.items():
        target = table[name]
        down, up = state_dict[group["down"]], state_dict[group["up"]]
        rows = [n for _, n in target.parts]
        if (
            down.ndim != 2
            or up.ndim != 2
            or up.shape[1] != down.shape[0]
            or down.shape[1] != target.in_features
            or up.shape[0] != sum(rows)
        ):
            bad_shapes.append(
                f"{name}: down {tuple(down.shape)}, up {tuple(up.shape)}; "
                f"expected down (r, {target.in_features}), up ({sum(rows)}, r)"
            )
            continue
        rank = down.shape[0]
        scale = 1.0
        if "alpha" in group:
            alpha = state_dict[group["alpha"]]
            if alpha.numel() != 1:
                bad_shapes.append(f"{group['alpha']}: alpha must be a scalar, got shape {tuple(alpha.shape)}")
                continue
            scale = float(alpha.item()) / rank
        if target.swap_shift_scale:
            shift, scale_rows = up.chunk(2, dim=0)
            up = torch.cat([scale_rows, shift], dim=0)
        for (module, _), up_part in zip(target.parts, up.split(rows, dim=0), strict=True):
            deltas.append(LoraDelta(module=module, down=down, up=up_part, scale=scale))
    if bad_shapes:
        raise LoraError("LoRA factors do not fit the transformer's layers", keys=bad_shapes, source=source)
    return deltas


def load_lora_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a FLUX LoRA ``.safetensors`` file (`lora_files.read_lora_file`: safe loading only).

    For a diffusers/peft-style file whose alphas are stored only in the ``lora_adapter_metadata`` header,
    the returned dict gains one ``<module>.alpha`` tensor per LoRA layer, so that :func:`lora_deltas` scales
    it as diffusers would.

    Raises:
        LoraError: the file is missing, is not a safetensors file, or holds no tensors.
    """
    state_dict, metadata = read_lora_file(path)
    try:
        style = detect_style(state_dict.keys())
    except LoraError:
        style = None  # lora_deltas reports it, naming the keys
    if style == "peft":
        state_dict.update(peft_alphas(state_dict, metadata, path))
    return state_dict


def load_lora(path: str | Path, config: Mapping[str, Any], *, skip_text_encoder: bool = False) -> list[LoraDelta]:
    """Read a LoRA file and convert it to deltas for a transformer with this config (errors name the file)."""
    state_dict = load_lora_state_dict(path)
    try:
        return lora_deltas(state_dict, config, source=path, skip_text_encoder=skip_text_encoder)
    except LoraError as error:
        if error.source is not None:
            raise
        raise LoraError(str(error), source=path) from error



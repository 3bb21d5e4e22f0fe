"""Single-file transformer checkpoints: one .safetensors file of a FLUX transformer, in BFL or diffusers names.

A FLUX fine-tune is often one file of the transformer in the original (BFL) key layout,
`double_blocks.0.img_attn.qkv.weight`, ..., sometimes with ComfyUI's `model.diffusion_model.` prefix. It is converted
here to diffusers names with every size taken from the model's transformer config (names from
names.py beside it). diffusers' own converter (`convert_flux_transformer_checkpoint_to_diffusers`, 0.42.1)
hard-codes FLUX.1-dev's width (3072, MLP 12288) for the single blocks and does not compare the file with the config
(extra blocks are dropped with a warning, missing ones left unloaded); this conversion gives the same tensors as
diffusers' at FLUX.1-dev's width (tests/test_single_file.py) and refuses any file that does not fit the config exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel

from ...devices import Quantize, transformer_quantization
from ...hub import local_or_hub_file
from ...model_info import ModelLoadError
from .names import (
    DOUBLE_BLOCK_LINEARS,
    DOUBLE_BLOCK_NORMS,
    GLOBAL_LINEARS,
    SHIFT_SCALE_SWAPPED,
    SINGLE_BLOCK_LINEARS,
    SINGLE_BLOCK_NORMS,
)

SINGLE_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # ComfyUI full checkpoints, kohya-style names
_LINEAR = ((".weight", ".weight"), (".bias", ".bias"))
_NORM = ((".scale", ".weight"),)
_MAX_LISTED = 5  # keys spelt out per kind of mismatch in an error


def bfl_key_map(config: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Every BFL parameter of a FLUX transformer of this config -> its diffusers parameters, in row order."""
    modules = [(bfl, parts, _LINEAR) for bfl, _, parts in GLOBAL_LINEARS
               if config.get("guidance_embeds") or not bfl.startswith("guidance_in.")]
    for i in range(config["num_layers"]):
        modules += [(f"double_blocks.{i}.{b}", tuple(f"transformer_blocks.{i}.{d}" for d in ds), _LINEAR)
                    for b, _, ds in DOUBLE_BLOCK_LINEARS]
        modules += [(f"double_blocks.{i}.{b}", (f"transformer_blocks.{i}.{d}",), _NORM) for b, d in DOUBLE_BLOCK_NORMS]
    for i in range(config["num_single_layers"]):
        modules += [(f"single_blocks.{i}.{b}", tuple(f"single_transformer_blocks.{i}.{d}" for d in ds), _LINEAR)
                    for b, _, ds in SINGLE_BLOCK_LINEARS]
        modules += [(f"single_blocks.{i}.{b}", (f"single_transformer_blocks.{i}.{d}",), _NORM)
                    for b, d in SINGLE_BLOCK_NORMS]
    return {bfl + s: tuple(d + t for d in ds) for bfl, ds, suffixes in modules for s, t in suffixes}


def diffusers_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of a diffusers FluxTransformer2DModel of this config (built on the meta device)."""
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def bfl_shapes(config: dict[str, Any], target: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of this config in the BFL layout (fused layers: their parts' rows added up).

    `target`: the diffusers shapes of the config, when already known.
    """
    key_map = bfl_key_map(config)
    target = diffusers_shapes(config) if target is None else target
    missed = sorted(set(target) - {d for ds in key_map.values() for d in ds})
    if missed:
        raise ModelLoadError(f"this transformer config has parameters with no BFL name: {', '.join(missed[:5])}")
    return {bfl: (sum(target[d][0] for d in ds), *target[ds[0]][1:]) for bfl, ds in key_map.items()}


def bfl_to_diffusers(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any], target: dict[str, tuple[int, ...]] | None = None
) -> dict[str, torch.Tensor]:
    """A BFL-layout FLUX transformer state dict (no prefix) in diffusers names, split by the config's sizes.

    Fused layers become row slices (views) of the fused tensor; the final adaLN's halves are swapped. `target`: the
    diffusers shapes of the config, when already known.
    """
    target = diffusers_shapes(config) if target is None else target
    converted: dict[str, torch.Tensor] = {}
    for bfl, parts in bfl_key_map(config).items():
        tensor = state_dict[bfl]
        if parts[0].rsplit(".", 1)[0] in SHIFT_SCALE_SWAPPED:
            shift, scale = tensor.chunk(2, dim=0)
            tensor = torch.cat([scale, shift], dim=0)
        pieces = tensor.split([target[d][0] for d in parts], dim=0) if len(parts) > 1 else (tensor,)
        converted.update(zip(parts, pieces, strict=True))
    return converted


def _blocks(keys: Any, double: str, single: str) -> tuple[int, int]:
    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)})

    return count(double), count(single)


def _single_file_error(path: Path, model: str, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                       config: dict[str, Any], bfl: bool) -> ModelLoadError | None:
    """None when the file has exactly the expected keys and shapes, else an error saying how they differ."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k} is {list(found[k])}, the config needs {list(expected[k])}"
             for k in sorted(set(found) & set(expected)) if found[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return None
    names = ("double_blocks.", "single_blocks.") if bfl else ("transformer_blocks.", "single_transformer_blocks.")
    double, single = _blocks(found, *names)
    width_key = "img_in.weight" if bfl else "x_embedder.weight"
    width = found[width_key][0] if width_key in found else "?"
    config_width = config["num_attention_heads"] * config["attention_head_dim"]
    lines = [f"{path} does not fit the transformer of {model}: the file has {double} double-stream and {single} "
             f"single-stream blocks of width {width}, the config {config['num_layers']} and "
             f"{config['num_single_layers']} of width {config_width}"]
    for what, keys in (("missing", missing), ("not in the model", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" (and {len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
            lines.append(f"{what}: {'; '.join(keys[:_MAX_LISTED])}{more}")
    guidance = "guidance_in.in_layer.weight" if bfl else "time_text_embed.guidance_embedder.linear_1.weight"
    if (guidance in expected) != (guidance in found):
        has = "has no" if guidance in expected else "has a"
        lines.append(f"hint: the file {has} guidance embedding and the config says guidance_embeds: "
                     f"{str(guidance in expected).lower()}; use a model whose transformer matches (FLUX.1-dev has "
                     f"guidance embedding, FLUX.1-schnell has none)")
    return ModelLoadError("\n  ".join(lines))


def transformer_file(spec: str) -> Path:
    """The local path of a single-file transformer: a local file or `repo-id/path/in/repo.safetensors`."""
    path = local_or_hub_file(spec)
    if path is None:
        raise ModelLoadError(f"the transformer checkpoint {spec} does not exist (expected a local .safetensors file or "
                             f"hub-repo-id/path/in/repo.safetensors)")
    return path


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def single_file_state_dict(path: Path, model: str, config: dict[str, Any], dtype: torch.dtype | None = None
                           ) -> dict[str, torch.Tensor]:
    """The transformer of a single .safetensors file as a diffusers state dict that fits `config` exactly.

    The file holds either BFL keys (optionally under `model.diffusion_model.` or `diffusion_model.`; other keys of
    a full checkpoint, such as its VAE, are then ignored) or diffusers keys. Floating tensors are cast to `dtype`.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            keys = list(file.keys())
            prefix = next((p for p in SINGLE_FILE_PREFIXES if any(k.startswith(p) for k in keys)), "")
            names = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
            bfl = any(k.startswith(("double_blocks.", "single_blocks.")) for k in names)
            if not bfl and not any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in names):
                shown = ", ".join(keys[:_MAX_LISTED]) or "none"
                raise ModelLoadError(
                    f"{path} is not a FLUX transformer checkpoint: none of its {len(keys)} keys is a FLUX block in "
                    f"the BFL layout (double_blocks.0.img_attn.qkv.weight, ...) or in diffusers' "
                    f"(transformer_blocks.0.attn.to_q.weight, ...); its keys start with: {shown}")
            found = {name: tuple(file.get_slice(key).get_shape()) for name, key in names.items()}
            target = diffusers_shapes(config)
            expected = bfl_shapes(config, target) if bfl else target
            error = _single_file_error(path, model, found, expected, config, bfl)
            if error:
                raise error
            tensors = {name: _cast(file.get_tensor(key), dtype) for name, key in names.items()}  # one at a time
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"could not read the transformer checkpoint {path} as a .safetensors file: {exc}") from exc
    return bfl_to_diffusers(tensors, config, target) if bfl else tensors


class _DropFp32CastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


@contextmanager
def _quiet_fp32_cast_warning() -> Iterator[None]:
    """Hide diffusers' warning about float32 modules when a model without any is cast by `from_single_file`."""
    logger, drop = logging.getLogger("diffusers.models.modeling_utils"), _DropFp32CastWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def load_single_file_transformer(
    spec: str, model: str, config: dict[str, Any], dtype: torch.dtype, quantize: Quantize = "none"
) -> FluxTransformer2DModel:
    """A FLUX transformer from one .safetensors file, its config from `model` (a local folder or hub id).

    `quantize` int8/fp8 quantises the loaded weights with torchao, as diffusers does while loading a folder: diffusers
    0.42.1's `from_single_file` takes a `quantization_config` as already-quantised weights, so it is not passed there.
    nf4 (bitsandbytes) is refused.
    """
    if quantize == "nf4":
        raise ModelLoadError("--quantize nf4 cannot be combined with a single-file transformer: diffusers quantises to "
                             "bitsandbytes 4-bit only while loading a model folder; use --quantize int8 or fp8, or "
                             "leave out the transformer file")
    quant = transformer_quantization(quantize, dtype)
    path = transformer_file(spec)
    state_dict = single_file_state_dict(path, model, config, dtype)
    try:
        with _quiet_fp32_cast_warning():
            transformer = FluxTransformer2DModel.from_single_file(
                state_dict, config=model, subfolder="transformer", dtype=dtype
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load the transformer checkpoint {path}: {exc}") from exc
    if quant is not None:
        from torchao.quantization import quantize_

        quantize_(transformer, quant.get_apply_tensor_subclass())
    return transformer

"""Loading FLUX components through diffusers, on the chosen device, dtype and offload mode."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from .hub import fetch
from .model_info import ModelLoadError

Offload = Literal["none", "model", "sequential"]
Quantize = Literal["none", "nf4", "int8", "fp8"]
FULL_SIZE_LAYERS = 19  # FLUX.1-dev/schnell: 19 double-stream blocks, 12B parameters
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def pick_device(name: str | None = None) -> torch.device:
    """The named device, else CUDA, then MPS, then CPU."""
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device cuda was asked for, but torch sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device mps was asked for, but torch sees no MPS device")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The named dtype, else bfloat16 on accelerators and float32 on the CPU."""
    if name:
        if name not in DTYPES:
            raise ModelLoadError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[name]
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def transformer_config(model: str) -> dict[str, Any]:
    """The transformer config of a local folder, or of a hub model (fetched first: clear errors for gated
    models, missing repos and an offline machine with an empty cache)."""
    if Path(model).is_dir():
        path = Path(model) / "transformer" / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{model} is not a diffusers FLUX folder: it has no transformer/config.json")
    else:
        fetch(model, "model_index.json")
        path = fetch(model, "transformer/config.json")
    return json.loads(path.read_text(encoding="utf-8"))


def check_device(model: str, config: dict[str, Any], device: torch.device, explicit: bool) -> None:
    """Refuse to run a full-size model on the CPU unless the CPU was asked for by name."""
    if device.type != "cpu" or explicit or config.get("num_layers", 0) < FULL_SIZE_LAYERS:
        return
    width = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = 2 * config["num_layers"] + config["num_single_layers"]
    billions = 12 * (width / 3072) ** 2 * blocks / (2 * 19 + 38)
    raise ModelLoadError(
        f"{model} is a full-size model (about {billions:.0f}B parameters) and no CUDA or MPS device was found; "
        f"on the CPU it needs about {billions * 4:.0f} GB of memory in fp32 and minutes per step. "
        f"Pass --device cpu to run it there anyway"
    )


def _transformer_quantization(quantize: Quantize, dtype: torch.dtype) -> Any:
    """The diffusers quantization config of the transformer (None for `none`)."""
    if quantize == "none":
        return None
    try:
        if quantize == "nf4":
            from diffusers import BitsAndBytesConfig

            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig() if quantize == "int8" else Float8WeightOnlyConfig())
    except ImportError as exc:
        package = "bitsandbytes" if quantize == "nf4" else "torchao"
        raise ModelLoadError(f"--quantize {quantize} needs the {package} package: pip install {package}") from exc


def quantization(quantize: Quantize, dtype: torch.dtype) -> Any:
    """A diffusers quantization config for the transformer (None for `none`)."""
    config = _transformer_quantization(quantize, dtype)
    if config is None:
        return None
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={"transformer": config})


# --- single-file transformer checkpoints ----------------------------------------------------------------------------
#
# A FLUX fine-tune is often one .safetensors file of the transformer in the original (BFL) key layout,
# `double_blocks.0.img_attn.qkv.weight`, ..., sometimes with ComfyUI's `model.diffusion_model.` prefix. It is converted
# here to diffusers names with every size taken from the model's transformer config. diffusers' own converter
# (`convert_flux_transformer_checkpoint_to_diffusers`, 0.42.1) hard-codes FLUX.1-dev's width (3072, MLP 12288) for the
# single blocks and does not compare the file with the config (extra blocks are dropped with a warning, missing ones
# left unloaded); this conversion gives the same tensors as diffusers' at FLUX.1-dev's width (tests/test_single_file.py)
# and refuses any file that does not fit the config exactly.

SINGLE_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # ComfyUI full checkpoints, kohya-style names
_LINEAR = ((".weight", ".weight"), (".bias", ".bias"))
_NORM = ((".scale", ".weight"),)
# (BFL module, diffusers modules in the BFL module's row order, parameter suffixes BFL -> diffusers)
_GLOBAL_MODULES: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], ...] = (
    ("img_in", ("x_embedder",), _LINEAR),
    ("txt_in", ("context_embedder",), _LINEAR),
    ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",), _LINEAR),
    ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",), _LINEAR),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",), _LINEAR),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",), _LINEAR),
    ("final_layer.linear", ("proj_out",), _LINEAR),
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",), _LINEAR),  # (shift, scale) in BFL, (scale, shift) here
)
_GUIDANCE_MODULES = (
    ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",), _LINEAR),
    ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",), _LINEAR),
)
_DOUBLE_MODULES = (
    ("img_mod.lin", ("norm1.linear",), _LINEAR),
    ("txt_mod.lin", ("norm1_context.linear",), _LINEAR),
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), _LINEAR),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), _LINEAR),
    ("img_attn.norm.query_norm", ("attn.norm_q",), _NORM),
    ("img_attn.norm.key_norm", ("attn.norm_k",), _NORM),
    ("txt_attn.norm.query_norm", ("attn.norm_added_q",), _NORM),
    ("txt_attn.norm.key_norm", ("attn.norm_added_k",), _NORM),
    ("img_attn.proj", ("attn.to_out.0",), _LINEAR),
    ("txt_attn.proj", ("attn.to_add_out",), _LINEAR),
    ("img_mlp.0", ("ff.net.0.proj",), _LINEAR),
    ("img_mlp.2", ("ff.net.2",), _LINEAR),
    ("txt_mlp.0", ("ff_context.net.0.proj",), _LINEAR),
    ("txt_mlp.2", ("ff_context.net.2",), _LINEAR),
)
_SINGLE_MODULES = (
    ("modulation.lin", ("norm.linear",), _LINEAR),
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), _LINEAR),
    ("norm.query_norm", ("attn.norm_q",), _NORM),
    ("norm.key_norm", ("attn.norm_k",), _NORM),
    ("linear2", ("proj_out",), _LINEAR),
)
_SWAPPED = "final_layer.adaLN_modulation.1"
_MAX_LISTED = 5  # keys spelt out per kind of mismatch in an error


def bfl_key_map(config: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Every BFL parameter of a FLUX transformer of this config -> its diffusers parameters, in row order."""
    modules = list(_GLOBAL_MODULES) + (list(_GUIDANCE_MODULES) if config.get("guidance_embeds") else [])
    for i in range(config["num_layers"]):
        modules += [(f"double_blocks.{i}.{b}", tuple(f"transformer_blocks.{i}.{d}" for d in ds), sfx)
                    for b, ds, sfx in _DOUBLE_MODULES]
    for i in range(config["num_single_layers"]):
        modules += [(f"single_blocks.{i}.{b}", tuple(f"single_transformer_blocks.{i}.{d}" for d in ds), sfx)
                    for b, ds, sfx in _SINGLE_MODULES]
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
        if bfl.startswith(_SWAPPED):
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
    local = Path(spec).expanduser()
    if local.is_file():
        return local.resolve()
    parts = spec.split("/")
    if len(parts) >= 3 and spec.endswith(".safetensors") and not spec.startswith((".", "/", "~")):
        return fetch("/".join(parts[:2]), "/".join(parts[2:]))
    raise ModelLoadError(f"the transformer checkpoint {spec} does not exist (expected a local .safetensors file or "
                         f"hub-repo-id/path/in/repo.safetensors)")


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
    quant = _transformer_quantization(quantize, dtype)
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


def load_flux(
    model: str, device: torch.device, dtype: torch.dtype, offload: Offload = "none", quantize: Quantize = "none",
    explicit_device: bool = True, transformer: str | None = None,
) -> FluxPipeline:
    """A FluxPipeline from a diffusers folder or hub id, placed on `device` or offloaded to it.

    `transformer`, a single-file checkpoint (local or `repo-id/path/in/repo.safetensors`), replaces the model's own
    transformer; its config and every other component still come from `model`.
    """
    config = transformer_config(model)
    check_device(model, config, device, explicit_device)
    components = {}
    if transformer is not None:
        components["transformer"] = load_single_file_transformer(transformer, model, config, dtype, quantize)
    try:
        pipe = FluxPipeline.from_pretrained(
            model, dtype=dtype, quantization_config=None if components else quantization(quantize, dtype), **components
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the FLUX model {model!r}: {exc}") from exc
    if offload == "none":
        return pipe.to(device)
    if device.type == "cpu":
        raise ModelLoadError(f"--offload {offload} moves weights between the CPU and a GPU; the device is the CPU")
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe

"""How much memory a generation needs, estimated from the model's config, the size, the entities and the attention
form before anything is allocated; and whether it fits where it would run.

The estimate is an upper-bound sketch of the peak, not a measurement. It counts:

* the model's weights: the bytes of its weight files (a local folder, or a hub model in the local cache; a hub
  model not downloaded yet counts nothing here, its download says its size);
* the regional attention mask (entities only): the (N, N) bool matrix of allowed pairs over all N = text + image
  tokens, built with copies of its parts (2 bytes a pair); the dense form adds the additive float mask and, since a
  masked call cannot use a fused kernel, one float32 score per head and pair;
* the transformer's activations: about 12 hidden-state sized tensors per token;
* the VAE decoder's largest activation: its first block's channels at full resolution, three at once.

Image tokens are the latent grid packed 2 x 2 (FLUX and Qwen-Image): (width / (8 * 2)) x (height / (8 * 2)) with
the usual VAE scale factor of 8. Text tokens are `max_sequence_length` per prompt group (the global prompt and
each entity). `estimate_memory(layout)` gives the parts; `check_memory(layout, device, source)` warns (a
`LayoutWarning`) of a size far from the model's and refuses (a `LayoutError`: exit 2 in the CLI) one that cannot
fit, before any model is loaded.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .layout import Layout, LayoutError
from .layout_warnings import LayoutWarning
from .model_info import declaration, default_max_sequence_length, model_family, model_folder, scale_factor
from .structured_text import load_json

PACK = 2  # latent pixels per token side (FLUX's and Qwen-Image's 2 x 2 packing)
ACTIVATIONS_PER_TOKEN = 12  # hidden-state sized tensors alive at once in a block (q, k, v, out, the 4x MLP, ...)
DECODER_COPIES = 3  # the VAE decoder's full-resolution tensors alive at once (input, output, norm)
AUTO_DENSE_BELOW = 1024  # `auto` runs the dense form below this many tokens (attention_backends.AUTO_SPLIT_MIN_TOKENS)
FAR_FACTOR = 4  # a size with over 4x (or under 1/4) the pixels of the model's declared or native size is far
HEADROOM = 0.9  # what of the available memory a generation may plan to use
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak of one generation, in bytes, by part, and the token counts it comes from."""

    weights: int
    attention: int
    activations: int
    decoder: int
    text_tokens: int
    image_tokens: int
    form: str  # the attention form the estimate assumes: dense, flex, split or none (no entities)

    @property
    def total(self) -> int:
        return self.weights + self.attention + self.activations + self.decoder

    def describe(self) -> str:
        parts = [f"{name} {gib(value)}" for name, value in (("weights", self.weights), ("attention", self.attention),
                 ("activations", self.activations), ("VAE decode", self.decoder)) if value >= GIB // 100]
        listed = "".join(f"{part}, " for part in parts)
        return f"about {gib(self.total)} ({listed}{self.text_tokens} text + {self.image_tokens} image " \
               f"tokens, {self.form} attention)"


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB" if value < 10 * GIB else f"{value / GIB:,.0f} GiB"


def _config(model: str, part: str) -> dict:
    path = Path(model_folder(model)) / part / "config.json"
    try:
        data = load_json(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):  # an unreadable config: the family's usual values below
        return {}
    return data if isinstance(data, dict) else {}


def _local_folder(model: str) -> Path | None:
    """The model's files: a local folder, or its snapshot in the Hugging Face cache; None when neither."""
    folder = Path(model_folder(model))
    if folder.is_dir():
        return folder
    from huggingface_hub.constants import HF_HUB_CACHE

    snapshots = Path(HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.iterdir()) if snapshots.is_dir() else []
    return found[-1] if found else None


@lru_cache(maxsize=8)
def weight_bytes(model: str) -> int:
    """The bytes of the model's weight files (0 when it has no local files yet)."""
    folder = _local_folder(model)
    if folder is None:
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def _form(layout: Layout, tokens: int) -> str:
    if not layout.entities:
        return "none"
    if layout.attention == "auto":
        return "dense" if tokens < AUTO_DENSE_BELOW else "split"
    return layout.attention


def estimate_memory(layout: Layout, bytes_per_value: int = 4) -> MemoryEstimate:
    """The estimated peak memory of generating `layout` (its model, size, entities, attention form), with weights
    and activations held in `bytes_per_value` bytes (4: float32, as on the CPU; 2: bfloat16)."""
    width, height = layout.size
    factor = scale_factor(layout.model) * PACK
    image_tokens = (width // factor) * (height // factor)
    per_group = layout.max_sequence_length or default_max_sequence_length(layout.model)
    entity_length = min(per_group, layout.entity_tokens) if isinstance(layout.entity_tokens, int) else per_group
    text_tokens = per_group + len(layout.entities) * entity_length
    tokens = text_tokens + image_tokens
    transformer = _config(layout.model, "transformer")
    heads = int(transformer.get("num_attention_heads", 24))
    inner = heads * int(transformer.get("attention_head_dim", 128))
    form = _form(layout, tokens)
    branches = 2 if layout.regions_on_negative and layout.cfg > 1 else 1  # masks kept per prompt branch
    attention = 0
    if form != "none":
        attention = 2 * tokens**2 * branches  # the bool mask of allowed pairs and the copies it is built from
        if form == "dense":
            attention += tokens**2 * (bytes_per_value * branches + 4 * heads)  # additive mask, float32 scores
    activations = ACTIVATIONS_PER_TOKEN * tokens * inner * bytes_per_value
    channels = (_config(layout.model, "vae").get("block_out_channels") or [128])[0]
    decoder = DECODER_COPIES * int(channels) * width * height * bytes_per_value
    return MemoryEstimate(weight_bytes(layout.model), attention, activations, decoder, text_tokens, image_tokens,
                          form)


def _device_kind(device: str | None) -> str:
    import torch

    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]


def available_memory(device: str | None = None) -> tuple[int | None, str]:
    """(bytes free, the device's name) where a generation would run: a CUDA GPU's free memory, else the memory the
    system reports available; None where it cannot be told (MPS, no /proc)."""
    import torch

    kind = _device_kind(device)
    if kind == "cuda" and torch.cuda.is_available():
        index = torch.device(device or "cuda").index
        free, _ = torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())
        return free, f"the GPU {torch.cuda.get_device_name(index)}"
    if kind != "cpu":
        return None, kind
    return _system_available(), "this machine"


def _system_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_warning(layout: Layout) -> str | None:
    """A note when the size has over FAR_FACTOR times (or under 1/FAR_FACTOR of) the pixels of the size the model
    declares (its eligen.json) or, for a hub model, its family's native size (a local folder that declares none
    says nothing of what it was trained at)."""
    declared = declaration(layout.model).size
    if declared is None and Path(model_folder(layout.model)).is_dir():
        return None
    made = declared or model_family(layout.model).size
    ratio = layout.size[0] * layout.size[1] / (made[0] * made[1])
    if 1 / FAR_FACTOR <= ratio <= FAR_FACTOR:
        return None
    times = f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"
    how = "declares" if declared else "was made for (its family's native size)"
    return f"{layout.size[0]}x{layout.size[1]} is far from the {made[0]}x{made[1]} the model {how}: " \
           f"{times} its pixels; expect images it was not trained to draw" + \
           (", and slow steps" if ratio > 1 else "")


def check_memory(layout: Layout, device: str | None = None, source: str = "<layout>", refuse: bool = True,
                 loaded: bool = False, field: str = "size") -> MemoryEstimate:
    """The estimate for `layout` on `device`, checked before anything is loaded: a `LayoutWarning` for a size far
    from the model's, and a `LayoutError` (field `size`) when the estimate exceeds what the device has free (with
    `refuse` False, a warning instead: a dry run says it, and goes on). Values are counted in the device's default
    dtype: float32 on the CPU, bfloat16 on a GPU. `loaded`: the weights are already in memory (a running studio), so
    only the generation's own memory must fit in what is free; `field` names the input the error is about."""
    note = size_warning(layout)
    if note:
        warnings.warn(f"{source}: size: {note}", LayoutWarning, stacklevel=2)
    available, where = available_memory(device)
    estimate = estimate_memory(layout, 4 if _device_kind(device) == "cpu" else 2)
    needed = estimate.total - estimate.weights if loaded else estimate.total
    if available is None or needed <= HEADROOM * available:
        return estimate
    width, height = layout.size
    made = declaration(layout.model).size or model_family(layout.model).size
    count = len(layout.entities)
    message = f"expected a generation that fits in memory: {width}x{height} with {count} " \
              f"entit{'y' if count == 1 else 'ies'} needs {estimate.describe()}, and {where} has " \
              f"{gib(available)} available"
    hint = f"use a smaller size (the model's own is {made[0]}x{made[1]})" + \
           (", fewer entities or `attention: split`" if estimate.form == "dense" else
            ", fewer entities" if estimate.form != "none" else "") + ", or a device with more memory"
    if refuse:
        raise LayoutError(source, field, message, hint)
    warnings.warn(f"{source}: {field}: {message}\n  hint: {hint}", LayoutWarning, stacklevel=2)
    return estimate

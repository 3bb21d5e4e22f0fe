"""IP-Adapters for FLUX: the two file formats people use, the adapter's layers, and the attention processor that adds
the adapter's attention to a block.

* ``instantx`` (InstantX/FLUX.1-dev-IP-Adapter, ``ip-adapter.bin``: a torch-saved dict ``{"image_proj": ...,
  "ip_adapter": ...}``, or the same keys flat with those prefixes in a .safetensors file). A SigLIP pooled vector
  goes through an MLP (``image_proj.proj.0``, GELU, ``image_proj.proj.2``) to 128 tokens with a LayerNorm
  (``image_proj.norm``); every dual and single block has a layer ``ip_adapter.{i}.to_k_ip`` / ``to_v_ip`` (no bias;
  dual blocks first). As the reference (diffsynth 2.1.12, ``interact_with_ipadapter``): keys are RMS-normalised per
  head (eps 1e-5, no weight), values not; a dual block's image queries (normalised, before the rotary embedding)
  attend to them and the result times the scale is added to the image attention output before its output
  projection; a single block's joint queries (after the rotary embedding) do, added to the joint attention output.
  The negative branch uses zero image embeddings at scale 1 (the reference's `FluxImageUnit_IPAdapter`).
* ``xlabs`` (XLabs-AI/flux-ip-adapter, ``ip_adapter.safetensors`` as diffusers' ``load_ip_adapter`` reads it:
  ``ip_adapter_proj_model.proj`` / ``.norm``, ``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj``
  with biases; or diffusers' converted ``image_proj.proj`` / ``ip_adapter.{i}.to_k_ip``). A CLIP ViT-L/14 image
  embedding goes through one linear layer to 4 (or 16) tokens with a LayerNorm; dual blocks only. As diffusers'
  ``FluxIPAdapterAttnProcessor``: the image queries (normalised, before the rotary embedding) attend to the keys
  and values, and the result times the scale is added to the block's image stream after its feed-forward. The
  negative branch uses zero image embeddings at the same scale (diffusers has one scale for both branches; its
  FluxPipeline encodes a black image for the negative instead of zero embeddings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor
from PIL import Image
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ...adapter_input import AdapterInput, IPAdapterError
from ...attention_backends import SplitMask, split_attention
from .attention import RegionalAttnProcessor, unrotated_qkv
from .image_encoders import ImageEncoder, load_image_encoder

Format = Literal["instantx", "xlabs"]
DEFAULT_ENCODERS: dict[Format, str] = {"instantx": "google/siglip-so400m-patch14-384",
                                       "xlabs": "openai/clip-vit-large-patch14"}
ENCODER_KIND: dict[Format, Literal["siglip", "clip"]] = {"instantx": "siglip", "xlabs": "clip"}
RMS_EPS = 1e-5  # the reference's RMSNorm of the adapter's keys
_MAX_LISTED = 6


def read_adapter_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter file, flat (`image_proj.norm.weight`): a .safetensors file, or a torch-saved dict
    (nested `{"image_proj": {...}, "ip_adapter": {...}}` or flat) read with `weights_only=True`."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise IPAdapterError(f"{path} could not be read as a .safetensors file: {exc}") from exc
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors read when used
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # a file in torch's legacy format
    except Exception as exc:  # torch.load raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise IPAdapterError(f"{path} could not be read as a .safetensors file or a weights-only torch file: "
                             f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(data, dict):
        raise IPAdapterError(f"{path} holds a {type(data).__name__}, expected a dict of tensors")
    flat: dict[str, torch.Tensor] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)})
        elif isinstance(value, torch.Tensor):
            flat[key] = value
    return flat


def adapter_format(path: Path) -> Format:
    """The format of an adapter file, from its key names (the tensors are not read)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                names = {k: torch.empty(0) for k in file.keys()}  # noqa: SIM118 - safe_open is not a mapping
        except (SafetensorError, OSError) as exc:
            raise IPAdapterError(f"{path} could not be read as a .safetensors file: {exc}") from exc
        return canonical_keys(names, path)[0]
    return canonical_keys(read_adapter_file(path), path)[0]


_XLABS_LAYER = re.compile(r"double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)")


def canonical_keys(tensors: dict[str, torch.Tensor], path: Path) -> tuple[Format, dict[str, torch.Tensor]]:
    """(format, tensors renamed to `image_proj.*` / `ip_adapter.{i}.to_{k,v}_ip.*`) of an adapter file."""
    if "image_proj.proj.0.weight" in tensors and "ip_adapter.0.to_k_ip.weight" in tensors:
        return "instantx", {k: v for k, v in tensors.items() if k.startswith(("image_proj.", "ip_adapter."))}
    if "ip_adapter_proj_model.proj.weight" in tensors:
        renamed = {}
        for key, value in tensors.items():
            if key.startswith("ip_adapter_proj_model."):
                renamed["image_proj." + key.removeprefix("ip_adapter_proj_model.")] = value
            elif match := _XLABS_LAYER.fullmatch(key):
                block, kv, kind = match.groups()
                renamed[f"ip_adapter.{block}.to_{kv}_ip.{kind}"] = value
        return "xlabs", renamed
    if "image_proj.proj.weight" in tensors and "ip_adapter.0.to_k_ip.weight" in tensors:
        return "xlabs", {k: v for k, v in tensors.items() if k.startswith(("image_proj.", "ip_adapter."))}
    shown = ", ".join(sorted(tensors)[:_MAX_LISTED]) or "none"
    raise IPAdapterError(
        f"{path} is not a FLUX IP-Adapter of a known format: expected InstantX/FLUX.1-dev-IP-Adapter's keys "
        f"(image_proj.proj.0.weight, ip_adapter.0.to_k_ip.weight, ...) or XLabs-AI/flux-ip-adapter's "
        f"(ip_adapter_proj_model.proj.weight, double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight, ...); "
        f"its {len(tensors)} keys start with: {shown}")


class MLPProjection(torch.nn.Module):
    """InstantX's image projection: pooled vector -> MLP -> `tokens` tokens of `width`, LayerNorm."""

    def __init__(self, embed_dim: int, width: int, tokens: int) -> None:
        super().__init__()
        self.width, self.tokens = width, tokens
        self.proj = torch.nn.Sequential(torch.nn.Linear(embed_dim, embed_dim * 2), torch.nn.GELU(),
                                        torch.nn.Linear(embed_dim * 2, width * tokens))
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeds).reshape(-1, self.tokens, self.width))


class LinearProjection(torch.nn.Module):
    """XLabs' image projection (diffusers' `ImageProjection`): one linear layer to `tokens` tokens, LayerNorm."""

    def __init__(self, embed_dim: int, width: int, tokens: int) -> None:
        super().__init__()
        self.width, self.tokens = width, tokens
        self.proj = torch.nn.Linear(embed_dim, width * tokens)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeds.to(self.proj.weight.dtype)).reshape(embeds.shape[0], self.tokens, -1))


class AdapterLayer(torch.nn.Module):
    """One block's keys and values of the adapter's image tokens."""

    def __init__(self, width: int, inner: int, heads: int, bias: bool, normalise_keys: bool) -> None:
        super().__init__()
        self.heads, self.normalise_keys = heads, normalise_keys
        self.to_k_ip = torch.nn.Linear(width, inner, bias=bias)
        self.to_v_ip = torch.nn.Linear(width, inner, bias=bias)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values), each (B, H, L, D), of image tokens (B, L, width)."""
        b = tokens.shape[0]
        key = self.to_k_ip(tokens).view(b, -1, self.heads, self.to_k_ip.out_features // self.heads).transpose(1, 2)
        value = self.to_v_ip(tokens).view(b, -1, self.heads, self.to_v_ip.out_features // self.heads).transpose(1, 2)
        if self.normalise_keys:  # the reference's RMSNorm: in float32, then back to the input dtype
            variance = key.to(torch.float32).square().mean(-1, keepdim=True)
            key = (key * torch.rsqrt(variance + RMS_EPS)).to(value.dtype)
        return key, value


@dataclass(frozen=True)
class AdapterShape:
    """The sizes an adapter file implies."""

    embed_dim: int  # the image encoder's output width the projection takes
    width: int  # the image tokens' width (FLUX's joint_attention_dim)
    tokens: int  # image tokens per reference image
    layers: int
    bias: bool


def adapter_shape(fmt: Format, tensors: dict[str, torch.Tensor], path: Path) -> AdapterShape:
    """The sizes of a canonical adapter state dict, checked for completeness."""
    first = "image_proj.proj.0.weight" if fmt == "instantx" else "image_proj.proj.weight"
    last = "image_proj.proj.2.weight" if fmt == "instantx" else "image_proj.proj.weight"
    needed = [first, last, "image_proj.norm.weight", "image_proj.norm.bias"]
    missing = [k for k in needed if k not in tensors]
    layers = len({k.split(".")[1] for k in tensors if k.startswith("ip_adapter.")})
    missing += [f"ip_adapter.{i}.to_{kv}_ip.weight" for i in range(layers) for kv in "kv"
                if f"ip_adapter.{i}.to_{kv}_ip.weight" not in tensors]
    if missing:
        raise IPAdapterError(f"{path} ({fmt} format) lacks {', '.join(missing[:_MAX_LISTED])}")
    width = tensors["image_proj.norm.weight"].shape[0]
    return AdapterShape(tensors[first].shape[1], width, tensors[last].shape[0] // width, layers,
                        "ip_adapter.0.to_k_ip.bias" in tensors)


class IPAdapter(torch.nn.Module):
    """A loaded FLUX IP-Adapter: the image projection and one layer per adapted block."""

    def __init__(self, fmt: Format, shape: AdapterShape, config: dict[str, Any]) -> None:
        super().__init__()
        self.format, self.shape = fmt, shape
        heads = config["num_attention_heads"]
        inner = heads * config["attention_head_dim"]
        self.dual_blocks = config["num_layers"]
        projection = MLPProjection if fmt == "instantx" else LinearProjection
        self.image_proj = projection(shape.embed_dim, shape.width, shape.tokens)
        self.ip_adapter = torch.nn.ModuleList(
            [AdapterLayer(shape.width, inner, heads, shape.bias, fmt == "instantx") for _ in range(shape.layers)])

    def layer_of(self, single: bool, block: int) -> int | None:
        """The adapter layer of a block (InstantX: dual blocks, then single ones; XLabs: dual blocks only)."""
        if not single:
            return block
        return self.dual_blocks + block if self.format == "instantx" else None

    def negative_scale(self, scale: float) -> float:
        """The scale of the negative branch's zero-embedding references: 1 for InstantX (the reference's default
        argument), the positive's for XLabs (diffusers' processors have one scale)."""
        return 1.0 if self.format == "instantx" else scale

    @torch.inference_mode()
    def keys_values(self, embeds: torch.Tensor, device: torch.device
                    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Every layer's keys and values of one reference, from its image embedding (n, embed_dim); several rows
        make one longer token sequence (as the reference's `view(1, -1, D)`). Each part runs on `device` in turn
        and goes back where it was (an offloaded adapter is never on the device whole)."""
        tokens = _on(device, self.image_proj, embeds.to(device))
        tokens = tokens.reshape(1, -1, tokens.shape[-1])
        pairs = [_on(device, layer, tokens) for layer in self.ip_adapter]
        return tuple(k for k, _ in pairs), tuple(v for _, v in pairs)


def _on(device: torch.device, module: torch.nn.Module, *args: torch.Tensor) -> Any:
    """`module(*args)` run on `device`, the module moved back where it was afterwards."""
    home = next(module.parameters()).device
    module.to(device)
    try:
        return module(*args)
    finally:
        module.to(home)


def check_fits(adapter: AdapterShape, fmt: Format, config: dict[str, Any], path: Path,
               tensors: dict[str, torch.Tensor]) -> None:
    """Refuse an adapter whose sizes do not fit the transformer's config."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"] + (config["num_single_layers"] if fmt == "instantx" else 0)
    problems = []
    if adapter.layers != blocks:
        what = "dual and single" if fmt == "instantx" else "dual"
        problems.append(f"it has {adapter.layers} adapter layers, the model {blocks} {what} blocks")
    if adapter.width != config["joint_attention_dim"]:
        problems.append(f"its image tokens are {adapter.width} wide, the model's text tokens "
                        f"{config['joint_attention_dim']}")
    rows = tensors["ip_adapter.0.to_k_ip.weight"].shape[0]
    if rows != inner:
        problems.append(f"its keys are {rows} wide, the model's attention {inner}")
    if problems:
        raise IPAdapterError(f"{path} ({fmt} format) does not fit this model: {'; '.join(problems)}")


def load_ip_adapter(path: Path, config: dict[str, Any], dtype: torch.dtype) -> IPAdapter:
    """An adapter file of either format, checked against the transformer config, on the CPU in `dtype`."""
    fmt, tensors = canonical_keys(read_adapter_file(path), path)
    shape = adapter_shape(fmt, tensors, path)
    check_fits(shape, fmt, config, path, tensors)
    adapter = IPAdapter(fmt, shape, config)
    try:
        adapter.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise IPAdapterError(f"{path} ({fmt} format) has tensors of unexpected names or shapes: {exc}") from exc
    return adapter.to(dtype).eval()


class AdapterAttnProcessor(RegionalAttnProcessor):
    """A block's attention (any form of the regional mask, as `RegionalAttnProcessor`) plus the adapter's attention
    to the references of the pass (`ip_adapter`); without references exactly `RegionalAttnProcessor`."""

    def __init__(self, flex: Any, layer: int | None, after_feed_forward: bool) -> None:
        FluxAttnProcessor.__init__(self)  # not RegionalAttnProcessor's: the compiled `flex` is shared
        self.flex, self.layer, self.after_feed_forward = flex, layer, after_feed_forward

    def __call__(
        self, attn: FluxAttention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | BlockMask | SplitMask | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None, ip_adapter: AdapterInput | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if ip_adapter is None or self.layer is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value = unrotated_qkv(attn, hidden_states, encoder_hidden_states)
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        image_query = query[:, n_text:]
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if isinstance(attention_mask, SplitMask):
            out = split_attention(query, key, value, attention_mask, self._attention_backend)
        elif isinstance(attention_mask, BlockMask):
            out = self.flex_attention(query, key, value, attention_mask)
        else:
            out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                                        parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:  # a single block: the joint queries after the rotary embedding
            n_text = out.shape[1] - ip_adapter.image_tokens
            return out + ip_adapter.contribution(query.transpose(1, 2), self.layer, n_text)
        text, image = out.split_with_sizes([n_text, hidden_states.shape[1]], dim=1)
        extra = ip_adapter.contribution(image_query.transpose(1, 2), self.layer, 0)
        if self.after_feed_forward:
            return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous()), extra
        return attn.to_out[1](attn.to_out[0]((image + extra).contiguous())), attn.to_add_out(text.contiguous())


def install(transformer: FluxTransformer2DModel, adapter: IPAdapter) -> None:
    """Give every attention layer an `AdapterAttnProcessor` for `adapter` (one compiled FlexAttention shared)."""
    flex = torch.compile(flex_attention, dynamic=False)
    processors = {}
    for name in transformer.attn_processors:
        single = name.startswith("single_transformer_blocks.")
        block = int(name.split(".")[1])
        processors[name] = AdapterAttnProcessor(flex, adapter.layer_of(single, block), adapter.format == "xlabs")
    transformer.set_attn_processor(processors)



@dataclass
class ImagePrompt:
    """A loaded adapter with its image encoder: reference images to keys and values of every adapter layer."""

    adapter: IPAdapter
    encoder: ImageEncoder

    @property
    def format(self) -> Format:
        return self.adapter.format

    def keys_values(self, image: Image.Image | None, device: torch.device
                    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Every layer's keys and values of a reference image, or of zero image embeddings (`image` None: the
        negative branch)."""
        if image is None:
            dtype = next(self.adapter.parameters()).dtype
            embeds = torch.zeros(1, self.adapter.shape.embed_dim, device=device, dtype=dtype)
        else:
            embeds = self.encoder(image, device)
        return self.adapter.keys_values(embeds, device)

    def negative_scale(self, scale: float) -> float:
        return self.adapter.negative_scale(scale)


def load_image_prompt(path: Path, image_encoder: str | None, transformer: FluxTransformer2DModel, dtype: torch.dtype,
                      device: torch.device, base_dir: Path = Path(".")) -> ImagePrompt:
    """An adapter file of either format and the image encoder it takes (`image_encoder`, else the format's own), on
    `device` when the transformer is there (else on the CPU, moved for each use), installed in `transformer`."""
    adapter = load_ip_adapter(path, dict(transformer.config), dtype)
    encoder = load_image_encoder(image_encoder or DEFAULT_ENCODERS[adapter.format], ENCODER_KIND[adapter.format],
                                 dtype, base_dir)
    if encoder.width != adapter.shape.embed_dim:
        raise IPAdapterError(f"{path} ({adapter.format} format) takes image embeddings {adapter.shape.embed_dim} wide; "
                             f"the image encoder {image_encoder or DEFAULT_ENCODERS[adapter.format]} gives "
                             f"{encoder.width}")
    if transformer.device == device:
        adapter.to(device)
        encoder.model.to(device)
    install(transformer, adapter)
    return ImagePrompt(adapter, encoder)

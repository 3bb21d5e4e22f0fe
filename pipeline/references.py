"""A layout's IP-Adapter references (`ip_adapter:` and the entities' `reference:`) as the adapter input of each CFG
branch (`adapter_input`), the same for every family that has an adapter (FLUX).

The global reference acts on every image token outside the regions of the entities that have a reference of their
own, and on the text tokens (where a layer runs on the joint sequence); an entity's reference acts on the image
tokens of its region only; where such regions overlap, their contributions add. The negative branch gets one
reference of zero image embeddings on the same tokens, each at the scale the adapter's format uses for that
reference's negative (`negative_scale`): nowhere else, so that guidance does not spread a per-entity reference's
effect over the whole image. A reference of scale 0 is dropped, and with no reference left the branches stay as
they are: bit for bit the result without an adapter.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from .adapter_input import AdapterInput, IPAdapterError, ReferenceAttention, reference_weights
from .conditioning import Conditioning
from .families.base import ModelFamily
from .families.loading import ip_adapter_format
from .hub import local_or_hub_file
from .images import open_rgb
from .layout import IPAdapterSpec, Layout, LayoutError
from .model_info import model_family


class ImagePrompt(Protocol):
    """A family's loaded adapter with its image encoder."""

    def keys_values(self, image: Image.Image | None, device: torch.device
                    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]: ...

    def negative_scale(self, scale: float) -> float: ...


def open_reference(spec: str, base_dir: Path, source: str, field: str) -> Image.Image:
    """A reference image (relative to the layout's folder), RGB, with an error naming the field."""
    return open_rgb((base_dir / Path(spec).expanduser()).resolve(), source, field)


def adapter_file(spec: IPAdapterSpec, base_dir: Path, source: str) -> Path:
    """The local path of an adapter file: a local file or `repo-id/path/in/repo`."""
    path = local_or_hub_file(spec.path, base_dir)
    if path is None:
        raise LayoutError(source, "ip_adapter.path", f"expected a local adapter file or repo-id/path/in/repo, "
                          f"{spec.path!r} is neither", f"{(base_dir / spec.path).resolve()} does not exist")
    return path


def active_references(layout: Layout) -> list[tuple[str, str, float, int | None]]:
    """(field, image, scale, entity index or None for the global one) of each reference of non-zero scale."""
    spec = layout.ip_adapter
    found = []
    if spec is not None and spec.image is not None and spec.scale > 0:
        found.append(("ip_adapter.image", spec.image, spec.scale, None))
    for i, entity in enumerate(layout.entities):
        if entity.reference is not None and entity.reference.scale > 0:
            found.append((f"entities[{i}].reference.image", entity.reference.image, entity.reference.scale, i))
    return found


def check_references(layout: Layout, base_dir: Path, source: str) -> None:
    """Every reference image of the layout exists and reads as an image (before any model is loaded)."""
    spec = layout.ip_adapter
    if spec is None:
        return
    if spec.image is None and not any(e.reference is not None for e in layout.entities):
        raise LayoutError(source, "ip_adapter", "expected a reference image: `image:` here or `reference:` on an "
                          "entity")
    family = model_family(layout.model)
    if not family.ip_adapter_formats:
        raise _no_adapters(family.name, source)
    try:
        ip_adapter_format(family, adapter_file(spec, base_dir, source))
    except IPAdapterError as exc:
        raise LayoutError(source, "ip_adapter.path", str(exc)) from None
    if spec.image_encoder is not None:
        _check_encoder(spec.image_encoder, base_dir, source)
    for field, image, _, _ in active_references(layout):
        open_reference(image, base_dir, source, field)


def _check_encoder(value: str, base_dir: Path, source: str) -> None:
    """An image encoder given as a local path is an existing folder (a hub id, org/name, is looked up at loading)."""
    path = (base_dir / Path(value).expanduser()).resolve()
    if path.is_dir():
        return
    if path.exists():
        raise LayoutError(source, "ip_adapter.image_encoder", f"expected an image encoder folder or a hub id, {path} "
                          "is a file", "give the folder holding the encoder's config.json and weights")
    if value.startswith((".", "/", "~")) or value.count("/") != 1:
        raise LayoutError(source, "ip_adapter.image_encoder", f"expected an image encoder folder or a hub id "
                          f"(org/name), {path} does not exist")


def with_references(
    prompt: ImagePrompt, layout: Layout, regions: np.ndarray | None, n_image: int, positive: Conditioning,
    negative: Conditioning | None, base_dir: Path, source: str,
) -> tuple[Conditioning, Conditioning | None]:
    """The branches with the layout's references (`regions`: (k, n_image) bool token regions of the entities)."""
    found = active_references(layout)
    if not found:
        return positive, negative
    device = positive.prompt_embeds.device
    referenced = [i for *_, i in found if i is not None]
    outside = None
    if referenced:
        if regions is None:
            raise ValueError("entity references need the entities' token regions (regions)")
        outside = ~torch.from_numpy(regions[referenced].any(axis=0))
    attentions = []
    negative_image, negative_text = torch.zeros(1, n_image, device=device), torch.zeros(1, device=device)
    for field, image_spec, scale, entity in found:
        keys, values = prompt.keys_values(open_reference(image_spec, base_dir, source, field), device)
        region = outside if entity is None else torch.from_numpy(regions[entity])
        image_weight, text_weight = reference_weights(scale, n_image, region, entity is None, device)
        attentions.append(ReferenceAttention(keys, values, image_weight, text_weight))
        image_weight, text_weight = reference_weights(prompt.negative_scale(scale), n_image, region, entity is None,
                                                      device)
        negative_image, negative_text = negative_image + image_weight, negative_text + text_weight
    positive = replace(positive, ip_adapter=AdapterInput(tuple(attentions)))
    if negative is None:
        return positive, None
    keys, values = prompt.keys_values(None, device)
    return positive, replace(negative, ip_adapter=AdapterInput((ReferenceAttention(keys, values, negative_image,
                                                                                   negative_text),)))


def _no_adapters(family: str, source: str) -> LayoutError:
    return LayoutError(source, "ip_adapter", f"expected no ip_adapter for a {family} model: IP-Adapters exist here "
                       "for FLUX models only (InstantX and XLabs formats)")


def load_image_prompt(family: ModelFamily, spec: IPAdapterSpec, base_dir: Path, source: str) -> ImagePrompt:
    """The family's adapter for `spec`; a family without adapters, or a file of no known format, is a layout
    error."""
    if not family.defaults.ip_adapter_formats:
        raise _no_adapters(family.defaults.name, source)
    try:
        return family.load_ip_adapter(adapter_file(spec, base_dir, source), spec.image_encoder, base_dir)
    except IPAdapterError as exc:
        raise LayoutError(source, "ip_adapter.path", str(exc)) from None


def with_absolute_paths(layout: Layout, base_dir: Path) -> Layout:
    """The layout with its adapter file, image encoder folder and reference images as absolute paths where they are
    local files (folders), so that the layout embedded in a PNG re-runs from anywhere."""
    spec = layout.ip_adapter
    if spec is None:
        return layout

    def absolute(value: str | None, folder: bool = False) -> str | None:
        if value is None:
            return None
        local = (base_dir / Path(value).expanduser()).resolve()
        return str(local) if (local.is_dir() if folder else local.is_file()) else value

    adapter = spec.model_copy(update={"path": absolute(spec.path), "image": absolute(spec.image),
                                      "image_encoder": absolute(spec.image_encoder, folder=True)})
    entities = [e if e.reference is None else e.model_copy(update={"reference": e.reference.model_copy(
        update={"image": absolute(e.reference.image)})}) for e in layout.entities]
    return layout.model_copy(update={"ip_adapter": adapter, "entities": entities})

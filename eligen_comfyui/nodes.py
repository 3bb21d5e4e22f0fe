"""The node definitions: EliGen Entity, EliGen Apply, EliGen Inpaint and Load EliGen layout (docs/comfyui.md)."""

from __future__ import annotations

from typing import Any

import comfy.conds
import comfy.hooks
import torch

from eligen.pipeline.layout import LayoutError

from .entities import Entity, group_lengths, mask_region, own_tokens, token_regions, with_entity_tokens
from .inpaint import fused, union_mask
from .layout_file import layout_entities
from .patch import COND_KEY, Regions, family_of, regions_hooks

ENTITIES = "ELIGEN_ENTITIES"
CATEGORY = "conditioning/eligen"
NEGATIVE_TOKENS = "eligen_negative_tokens"  # a layout's negative conditioning: tokens kept per regional group


def encode(clip: Any, text: str, label: str) -> tuple[list[list[Any]], tuple[int, bool]]:
    """The CONDITIONING of `text` as ComfyUI's CLIP Text Encode makes it, the prompt's own token count (with its
    end token) and whether the encoding is padded past it; or a clear error without a CLIP."""
    if clip is None:
        raise ValueError(f"{label}: no CLIP is connected (a diffusion-model-only checkpoint has none); connect the "
                         "CLIP output of a CLIP loader")
    tokens = clip.tokenize(text)
    conditioning = clip.encode_from_tokens_scheduled(tokens)
    return conditioning, own_tokens(clip, tokens, conditioning[0][0].shape[1])


class EliGenEntity:
    """An entity prompt and its region (a MASK, else a box), appended to the incoming entities."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        box = {"default": 0.0, "min": 0.0, "max": 16384.0, "step": 0.01}
        return {
            "required": {
                "clip": ("CLIP",),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                "x1": ("FLOAT", box), "y1": ("FLOAT", box),
                "x2": ("FLOAT", {**box, "default": 0.5}), "y2": ("FLOAT", {**box, "default": 0.5}),
                "units": (["fraction", "px"], {"tooltip": "box corners as fractions of the image or in pixels"}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "the region (the image's size; a pixel is in above 0.5); the box is "
                                             "ignored when a mask is connected"}),
                "entities": (ENTITIES,),
            },
        }

    RETURN_TYPES = (ENTITIES,)
    RETURN_NAMES = ("entities",)
    FUNCTION = "add"
    CATEGORY = CATEGORY

    def add(self, clip: Any, prompt: str, x1: float, y1: float, x2: float, y2: float, units: str,
            mask: torch.Tensor | None = None, entities: tuple[Entity, ...] = ()) -> tuple[tuple[Entity, ...]]:
        label = f"EliGen Entity {len(entities) + 1}"
        if not prompt.strip():
            raise ValueError(f"{label}: expected a prompt, it is empty")
        conditioning, (tokens, padded) = encode(clip, prompt, label)
        region = {"box": [x1, y1, x2, y2]} if mask is None else mask_region(mask, label)
        return ((*entities, Entity(prompt, conditioning[0][0], region, tokens, padded, units)),)


def _with_regions(conditioning: list[list[Any]], entities: tuple[Entity, ...], regions: torch.Tensor, width: int,
                  height: int, negative: bool, hooks: comfy.hooks.HookGroup) -> list[list[Any]]:
    """Each entry's text preceded by the entity groups (for a regional negative: its own text once per entity, its
    first tokens where a layout's `entity_tokens` says so), with its Regions and the patch's hook."""
    out = []
    for embedding, given in conditioning:
        options = {k: v for k, v in given.items() if k != NEGATIVE_TOKENS}
        kept = embedding[:, :given.get(NEGATIVE_TOKENS, embedding.shape[1])]
        groups = [kept] * len(entities) if negative else [e.embedding for e in entities]
        widths = {g.shape[-1] for g in groups} | {embedding.shape[-1]}
        if len(widths) != 1:
            raise ValueError(f"EliGen Apply: the entities were encoded {sorted(widths)} wide; encode every entity "
                             "and the prompts with the same CLIP")
        groups = [g.to(embedding) for g in groups] + [embedding]
        lengths = tuple(g.shape[1] for g in groups)
        model_conds = {**options.get("model_conds", {}),
                       COND_KEY: comfy.conds.CONDConstant(Regions(regions, lengths, width, height))}
        out.append([torch.cat(groups, dim=1), {**options, "model_conds": model_conds}])
    return comfy.hooks.set_hooks_for_conditioning(out, hooks)


class EliGenApply:
    """Global conditioning + entities -> conditioning that ComfyUI's samplers run with EliGen's regional attention."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        side = {"default": 1024, "min": 16, "max": 16384, "step": 16}
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "the FLUX.1 or Qwen-Image model the conditioning is for"}),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "entities": (ENTITIES,),
                "width": ("INT", side), "height": ("INT", side),
                "regions_on_negative": ("BOOLEAN", {"default": False, "tooltip": "the negative prompt repeated once "
                                                    "per entity with the same regions (else plain)"}),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model: Any, positive: list[list[Any]], negative: list[list[Any]], entities: tuple[Entity, ...],
              width: int, height: int, regions_on_negative: bool) -> tuple[list[list[Any]], list[list[Any]]]:
        hooks = regions_hooks(model.model.diffusion_model)  # a clear error first for a model EliGen does not run on
        regions = token_regions(list(entities), width, height)
        positive = _with_regions(positive, entities, regions, width, height, False, hooks)
        if regions_on_negative:
            negative = _with_regions(negative, entities, regions, width, height, True, hooks)
        return positive, negative


class EliGenInpaint:
    """Repaint the entities' regions of a source image and keep the rest (the paper's inpainting fusion)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        side = {"default": 1024, "min": 16, "max": 16384, "step": 16}
        return {
            "required": {
                "model": ("MODEL",),
                "source": ("LATENT", {"tooltip": "the source image encoded by the VAE, at width x height"}),
                "entities": (ENTITIES,),
                "width": ("INT", side), "height": ("INT", side),
                "fuse": (["positive", "both"], {"tooltip": "positive: the paper (the negative branch unfused, so "
                                                          "CFG pulls the background toward the source without "
                                                          "pinning it); both: the background follows the source"}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model: Any, source: dict[str, torch.Tensor], entities: tuple[Entity, ...], width: int,
              height: int, fuse: str) -> tuple[Any]:
        family_of(model.model.diffusion_model)
        return (fused(model, source["samples"], union_mask(list(entities), width, height), fuse == "both"),)


class LoadEliGenLayout:
    """An eligen layout (YAML, or a PNG written by eligen) -> its entities and prompts, encoded with the CLIP."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip": ("CLIP",), "path": ("STRING", {"default": "", "tooltip": "a layout .yaml "
                                                                     "file or a PNG written by eligen"})}}

    RETURN_TYPES = (ENTITIES, "CONDITIONING", "CONDITIONING", "INT", "INT", "BOOLEAN")
    RETURN_NAMES = ("entities", "positive", "negative", "width", "height", "regions_on_negative")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, clip: Any, path: str) -> tuple[Any, ...]:
        source = path.strip()
        layout, entities = layout_entities(source)
        label = f"Load EliGen layout {source}"
        encoded = []
        for e, region in entities:
            conditioning, (tokens, padded) = encode(clip, e.prompt, label)
            encoded.append(Entity(e.prompt, conditioning[0][0], region, tokens, padded))
        negative, (negative_tokens, negative_padded) = encode(clip, layout.negative_prompt, label)
        try:
            kept = with_entity_tokens(encoded, layout.entity_tokens, source)
            if layout.regions_on_negative and kept and layout.entity_tokens != "max":
                (n,) = group_lengths([(layout.negative_prompt, negative[0][0], negative_tokens, negative_padded)],
                                     layout.entity_tokens, "negative_prompt", source)
                negative = [[c[0], {**c[1], NEGATIVE_TOKENS: n}] for c in negative]
        except LayoutError as exc:
            raise ValueError(str(exc)) from None
        return (tuple(kept), encode(clip, layout.prompt, label)[0], negative, layout.width, layout.height,
                layout.regions_on_negative)


NODE_CLASS_MAPPINGS = {"EliGenEntity": EliGenEntity, "EliGenApply": EliGenApply, "EliGenInpaint": EliGenInpaint,
                       "LoadEliGenLayout": LoadEliGenLayout}
NODE_DISPLAY_NAME_MAPPINGS = {"EliGenEntity": "EliGen Entity", "EliGenApply": "EliGen Apply",
                              "EliGenInpaint": "EliGen Inpaint", "LoadEliGenLayout": "Load EliGen layout"}

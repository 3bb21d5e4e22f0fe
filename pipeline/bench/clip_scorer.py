"""CLIP scores as in Table 1 of the EliGen paper: entity CLIP (each entity's box crop against its prompt) and
global CLIP (the whole image against the global prompt).

The paper names the two scores but not the CLIP model, the crop handling or the scale. Chosen here, and
recorded by ``describe()``:

* model ``openai/clip-vit-large-patch14``, the CLIP the COCO-MIG evaluation (LeyRio/MIG_Bench README) uses;
  the paper's values (about 20 for entities, 22 to 27 global) fit 100 x cosine for such a model;
* 100 x the cosine of the projected image and text embeddings (MIG_Bench's ``logits_per_image`` is the same for
  OpenAI CLIP, whose logit scale is 100). torchmetrics' CLIPScore is 100 * max(cosine, 0); a trained CLIP's
  cosines for an image and a caption are practically always positive (about 0.15 to 0.35), so the two agree
  there, and leaving the cosine unclamped shows a negative one instead of hiding it as 0;
* an entity's crop is its box (clamped to the image, rounded outwards to whole pixels) squashed to a square
  before CLIP's resize and centre crop, so the whole box is seen, as MIG_Bench's local CLIP does (it resizes
  crops to 512 x 512); the text is the entity prompt as written, no templates; prompts longer than CLIP's
  77 tokens are truncated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from .items import BenchItem, Box
from .scoring import ImageScore

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def crop_box(image: Image.Image, box: Box) -> Image.Image | None:
    """The part of `image` inside `box`, rounded outwards to whole pixels and clamped; None if nothing is left."""
    x0, y0 = max(math.floor(box[0]), 0), max(math.floor(box[1]), 0)
    x1, y1 = min(math.ceil(box[2]), image.width), min(math.ceil(box[3]), image.height)
    if x1 <= x0 or y1 <= y0:
        return None
    return image.crop((x0, y0, x1, y1))


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
    """100 * cosine of each row pair of image and text embeddings."""
    return (100.0 * torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)).tolist()


class ClipScorer:
    """Entity and global CLIP scores; the model loads on first use."""

    name = "clip"

    def __init__(self, model: str = DEFAULT_CLIP, device: str | torch.device = "cpu") -> None:
        """`model` is a hub id or a local folder holding a CLIPModel and its processor."""
        self.model_id = model
        self.device = torch.device(device)
        self._loaded: tuple[Any, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """The model and the conventions, for results.json."""
        return {
            "name": self.name,
            "model": self.model_id,
            "score": "100 * cos(image, text), not clamped",
            "entity": "box crop (rounded outwards, clamped) squashed to a square, vs the entity prompt",
            "global": "whole image vs the layout's prompt",
            "max_text_tokens": 77,
        }

    def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
        """`clip_entity` per instance (None for a box outside the image) and `clip_global` for the image."""
        rgb = image.convert("RGB")
        crops = [crop_box(rgb, inst.box) for inst in item.instances]
        pairs = [(c, inst.prompt) for c, inst in zip(crops, item.instances, strict=True) if c is not None]
        images = [rgb] + [c.resize((max(c.size),) * 2, Image.Resampling.BICUBIC) for c, _ in pairs]
        scores = self._scores(images, [item.layout.prompt] + [prompt for _, prompt in pairs])
        entity = iter(scores[1:])
        rows = [{"clip_entity": None if c is None else next(entity)} for c in crops]
        return ImageScore(instances=rows, image={"clip_global": scores[0]})

    def _model(self) -> tuple[Any, Any]:
        """The (CLIPModel, CLIPProcessor), loaded on first use onto the device."""
        if self._loaded is None:
            from transformers import CLIPModel, CLIPProcessor

            model = CLIPModel.from_pretrained(self.model_id).to(self.device).eval()
            self._loaded = (model, CLIPProcessor.from_pretrained(self.model_id))
        return self._loaded

    @torch.no_grad()
    def _scores(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        """The CLIP score of each image with the text at the same position."""
        model, processor = self._model()
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True,
                           max_length=77).to(self.device)
        outputs = model(**inputs)
        return clip_score(outputs.image_embeds, outputs.text_embeds)

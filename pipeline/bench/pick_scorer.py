"""PickScore (Kirstain et al., 2023) of the whole image against the global prompt: one of LayoutSAM-Eval's global
quality metrics, as the published LayoutSAM-Eval scripts compute it (ContextGen's `layoutsam_eval.py`):

* the model `yuvalkirstain/PickScore_v1` (a CLIP ViT-H/14) with the processor of
  `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (the model's repository holds none); a local folder given instead
  must hold both;
* the image and text embeddings, each divided by its norm, their dot product times `exp(logit_scale)` (about
  100), the prompt truncated to 77 tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from .items import BenchItem
from .scoring import ImageScore

DEFAULT_PICK = "yuvalkirstain/PickScore_v1"
DEFAULT_PICK_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScorer:
    """`pick_score` per image; the model loads on first use."""

    name = "pick"

    def __init__(self, model: str = DEFAULT_PICK, processor: str = DEFAULT_PICK_PROCESSOR,
                 device: str | torch.device = "cpu") -> None:
        self.model_id, self.processor_id, self.device = model, processor, torch.device(device)
        self._loaded: tuple[Any, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_id, "processor": self.processor_id,
                "score": "exp(logit_scale) * cos(image, global prompt)", "max_text_tokens": 77}

    def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
        return ImageScore(instances=[{} for _ in item.instances],
                          image={"pick_score": self._score(image.convert("RGB"), item.layout.prompt)})

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModel, AutoProcessor

            model = AutoModel.from_pretrained(self.model_id).to(self.device).eval()
            self._loaded = (model, AutoProcessor.from_pretrained(self.processor_id))
        return self._loaded

    @torch.no_grad()
    def _score(self, image: Image.Image, prompt: str) -> float:
        model, processor = self._model()
        pixels = processor(images=image, return_tensors="pt").to(self.device)
        text = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        image_embeds = _features(model.get_image_features(**pixels))
        text_embeds = _features(model.get_text_features(**text))
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        return float(model.logit_scale.exp() * (text_embeds.float() @ image_embeds.float().T)[0, 0])


def _features(output: Any) -> torch.Tensor:
    """The projected embeddings, whether transformers returns the tensor or an output holding it."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output

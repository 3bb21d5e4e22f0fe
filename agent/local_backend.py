"""A Qwen-VL model run locally through transformers (AutoProcessor + AutoModelForImageTextToText).

Images go through qwen-vl-utils as the model cards show. It is imported here only, when a local model
is used: it imports torchvision at import time without declaring it (`pip install 'eligen[local]'`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .config import DEFAULT_MAX_PIXELS, Family
from .errors import AgentError
from .messages import Message
from .vision import PATCH_SIZES

MAX_NEW_TOKENS = 1024
KEPT_SPECIAL = re.compile(r"<\|(?:object_ref_start|object_ref_end|box_start|box_end)\|>")


class LocalBackend:
    """Generates answers with a local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint on the chosen device.

    `generate_kwargs` go to `model.generate` (sampling options, logits processors).
    """

    def __init__(self, model: str, family: Family, device: str | None = None, max_pixels: int | None = None,
                 generate_kwargs: dict[str, Any] | None = None) -> None:
        try:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            from eligen.pipeline.devices import pick_device, pick_dtype

            self.device = pick_device(device)
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=pick_dtype(None, self.device))
        except (OSError, ValueError, RuntimeError) as exc:
            raise AgentError(f"cannot load the local MLLM {model}: {exc}") from None
        self.model.to(self.device).eval()
        self.family = family
        self.generate_kwargs = generate_kwargs or {}
        limits = [v for v in (max_pixels, self._processor_max_pixels()) if v]
        self.max_pixels = min(limits) if limits else DEFAULT_MAX_PIXELS

    def _processor_max_pixels(self) -> int | None:
        """The processor's own pixel cap: images sent under it are not resized again."""
        image_processor = getattr(self.processor, "image_processor", None)
        size = getattr(image_processor, "size", None) or {}
        value = size.get("longest_edge") if isinstance(size, dict) else None
        return int(value) if value else getattr(image_processor, "max_pixels", None)

    def _conversation(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        conversation = []
        for message in messages:
            content: list[dict[str, Any]] = [{"type": "image", "image": message.image}] if message.image else []
            conversation.append({"role": message.role, "content": [*content, {"type": "text", "text": message.text}]})
        return conversation

    def complete(self, messages: Sequence[Message], schema: dict[str, Any] | None = None) -> str:
        """Greedy generation of the answer (the schema is in the instructions; it is not enforced locally).

        Decoded with special tokens, so Qwen2-VL's box tokens survive; other special tokens are removed.
        """
        import torch
        from qwen_vl_utils import process_vision_info

        conversation = self._conversation(messages)
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        images, videos = process_vision_info(conversation, image_patch_size=PATCH_SIZES[self.family])
        inputs = self.processor(text=[text], images=images, videos=videos, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        options = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, **self.generate_kwargs}
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        answer = self.processor.batch_decode(new_tokens, skip_special_tokens=False)[0]
        special = {t for t in self.processor.tokenizer.all_special_tokens if not KEPT_SPECIAL.fullmatch(t)}
        special |= {t for t in getattr(self.processor.tokenizer, "added_tokens_encoder", {})
                    if t.startswith("<|") and not KEPT_SPECIAL.fullmatch(t)}
        for token in special:
            answer = answer.replace(token, "")
        return answer.strip()

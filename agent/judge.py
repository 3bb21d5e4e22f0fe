"""The MLLM judge of a benchmark: is each entity correctly generated in its region? (`Scorer` "mllm-judge").

The EliGen paper measures the *entity success rate* (section 5.1, Table 1) by assessing "the quality of the
target regions, entity details, and image-text alignment with MLLMs" (Qwen2-VL, InternVL2, CogVLM2) and
aggregating the verdicts over all entities. The judge does the same per instance: it cuts the instance's
box out of the generated image (the bounding box, for mask regions too) and asks the model whether that
region shows the entity prompt. Only the crop is sent, not the whole image with the box drawn: the paper
judges the target regions, and a crop keeps the model from crediting an entity generated somewhere else.

The crop is the box widened by `CROP_MARGIN` of its width and height on each side (clipped to the image),
so an entity that slightly overflows its box is still seen whole; a crop whose shorter side is under
`MIN_CROP_SIDE` pixels is upscaled to it (bicubic), and every crop is sent at a size the Qwen-VL processor
leaves unchanged (`vision.sent_size`). The backends decode greedily (temperature 0), so a verdict depends
only on the image and the item.

The answer is untrusted data and is checked strictly: exactly one JSON object (optionally in one Markdown
code fence) with exactly the keys `correct` (a JSON boolean) and `reason` (a string). An unusable answer
is sent back with the problem up to `retries` times; then, as after a failed request, the instance gets
`judge_correct: None` and the problem in `judge_error`. No failed request, answer or box stops a
benchmark run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from eligen.pipeline.bench.items import BenchItem, Box, Instance
from eligen.pipeline.bench.scoring import ImageScore, Value

from . import prompts
from .backends import OpenAIBackend, make_backend, redact
from .config import Family, MllmSettings
from .errors import AgentError, AnswerError
from .grounding import clean_text
from .messages import ChatBackend, Message
from .vision import sent_size

NAME = "mllm-judge"
CROP_MARGIN = 0.1  # of the box's width (height) added left and right (above and below)
MIN_CROP_SIDE = 224  # px: shorter crops are upscaled so the model sees the entity at a usable size
DEFAULT_RETRIES = 2  # asks after an unusable answer, so at most 3 asks per instance
MAX_RETRIES = 10
MAX_ANSWER_CHARS = 10_000  # a verdict is a short object; longer answers are refused unread
MAX_REASON_CHARS = 300
MAX_ERROR_CHARS = 300
ECHO_CHARS = 2_000  # of an unusable answer, sent back with the problem
FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """A usable answer: whether the entity is correct, and the model's short reason."""

    correct: bool
    reason: str


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a repeated key (which would hide one of two verdicts)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise AnswerError(f"the key {repeated[0]!r} appears more than once")
    return dict(pairs)


def parse_verdict(text: str) -> Verdict:
    """The verdict in an answer, or AnswerError saying what is wrong with it."""
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerError(f"the answer is longer than {MAX_ANSWER_CHARS} characters")
    body = text.strip()
    fenced = FENCED.fullmatch(body)
    body = fenced.group(1) if fenced else body
    if not body:
        raise AnswerError("the answer is empty")
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise AnswerError(f"the answer is not one JSON object ({detail})") from None
    if not isinstance(data, dict):
        raise AnswerError(f"the answer is a JSON {type(data).__name__}, not an object")
    if set(data) != {"correct", "reason"}:
        missing, extra = sorted({"correct", "reason"} - set(data)), sorted(set(data) - {"correct", "reason"})
        raise AnswerError(f"the object must have exactly the keys 'correct' and 'reason' (missing: {missing}, "
                          f"extra: {[clean_text(key, 40) for key in extra[:5]]})")
    if not isinstance(data["correct"], bool):
        raise AnswerError(f"'correct' must be true or false, got a JSON {type(data['correct']).__name__}")
    if not isinstance(data["reason"], str):
        raise AnswerError(f"'reason' must be a string, got a JSON {type(data['reason']).__name__}")
    return Verdict(data["correct"], clean_text(data["reason"], MAX_REASON_CHARS))


def crop_box(size: tuple[int, int], box: Box) -> tuple[int, int, int, int]:
    """The pixel rectangle cut for `box` in an image of `size`: the box plus the margin, clipped to the image."""
    width, height = size
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"the box {list(box)} has a coordinate that is not a finite number")
    x0, y0, x1, y1 = box
    dx, dy = CROP_MARGIN * (x1 - x0), CROP_MARGIN * (y1 - y0)
    left, top = max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy))
    right, bottom = min(width, math.ceil(x1 + dx)), min(height, math.ceil(y1 + dy))
    if right <= left or bottom <= top:
        raise ValueError(f"the box {list(box)} has no area inside the {width}x{height} image")
    return left, top, right, bottom


def crop_instance(image: Image.Image, box: Box, family: Family, max_pixels: int) -> Image.Image:
    """The region of `box`, upscaled to MIN_CROP_SIDE where smaller, as RGB at the size it is sent at."""
    crop = image.convert("RGB").crop(crop_box(image.size, box))
    scale = max(1.0, MIN_CROP_SIDE / min(crop.size))
    try:
        size = sent_size((round(crop.width * scale), round(crop.height * scale)), family, max_pixels)
    except ValueError as exc:  # too elongated for a Qwen-VL processor
        raise ValueError(f"the box {list(box)} cannot be sent: {exc}") from None
    return crop if crop.size == size else crop.resize(size, Image.Resampling.BICUBIC)


def public_url(url: str | None) -> str | None:
    """`url` without user name, password, query or fragment (where keys are put)."""
    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class MllmJudge:
    """Asks an MLLM, for each instance of an item, whether its entity is correctly generated in its box."""

    name = NAME

    def __init__(self, backend: ChatBackend, settings: MllmSettings, retries: int = DEFAULT_RETRIES) -> None:
        if not 0 <= retries <= MAX_RETRIES:
            raise AgentError(f"the judge's retries must be 0 to {MAX_RETRIES}, got {retries}")
        self.backend, self.settings, self.retries = backend, settings, retries

    def describe(self) -> dict[str, Any]:
        """The backend, model, prompts and rules of the verdicts (never the API key)."""
        settings = self.settings
        return {"backend": "local" if settings.local else "openai-compatible",
                "model": settings.local or settings.model, "family": settings.family,
                "base_url": public_url(settings.url), "max_pixels": self.backend.max_pixels,
                "temperature": 0, "system_prompt": prompts.JUDGE_SYSTEM, "question": prompts.JUDGE_REQUEST,
                "retries": self.retries, "crop_margin": CROP_MARGIN, "min_crop_side": MIN_CROP_SIDE,
                "sends": "the crop of each instance's box only"}

    def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
        """`judge_correct`, `judge_reason` and `judge_error` for each instance, in order."""
        return ImageScore([self.judge(image, instance) for instance in item.instances])

    def judge(self, image: Image.Image, instance: Instance) -> dict[str, Value]:
        """The verdict on one instance; a failure is recorded in `judge_error`, never raised."""
        try:
            crop = crop_instance(image, instance.box, self.settings.family, self.backend.max_pixels)
            verdict = self._ask(crop, instance.prompt)
        except (AgentError, ValueError) as exc:  # a failed request, an unusable answer (AnswerError), a bad box
            error = clean_text(redact(str(exc), self.settings.api_key), MAX_ERROR_CHARS)
            return {"judge_correct": None, "judge_reason": "", "judge_error": error}
        return {"judge_correct": verdict.correct, "judge_reason": verdict.reason, "judge_error": None}

    def _ask(self, crop: Image.Image, prompt: str) -> Verdict:
        """Ask about the crop; send an unusable answer back with its problem, at most `retries` times."""
        messages = [Message("system", prompts.JUDGE_SYSTEM), Message("user", prompts.judge_request(prompt), crop)]
        text, problem = "", ""
        for attempt in range(self.retries + 1):
            if attempt:
                messages += [Message("assistant", text[:ECHO_CHARS] or "(empty)"),
                             Message("user", prompts.judge_retry_request(problem))]
            text = self.backend.complete(messages, prompts.JUDGE_SCHEMA)
            try:
                return parse_verdict(text)
            except AnswerError as exc:
                problem = str(exc)
        tries = f"{self.retries + 1} tries" if self.retries else "1 try"
        raise AnswerError(f"unusable answer after {tries}: {problem}; it answered: {clean_text(text, 80)!r}")


def make_judge(settings: MllmSettings, retries: int = DEFAULT_RETRIES) -> MllmJudge:
    """The judge for the settings the agent commands use (`load_settings` of the `--mllm-*` flags).

    Without `--mllm-model`, the model the server serves is asked for now, so `describe()` names it.
    """
    backend = make_backend(settings)
    if isinstance(backend, OpenAIBackend) and settings.model is None:
        settings = settings.model_copy(update={"model": backend.served_model()})
    return MllmJudge(backend, settings, retries)

"""LayoutSAM-Eval's region questions, asked of a VLM through the agent's backends (`Scorer` "layoutsam-vqa").

The questions are the benchmark's own, word for word, from CreatiLayout's `score_layoutsam_benchmark.py`:
the region's short caption (`region_captions`) and its detailed description (`detail_region_captions`), each
with every "/" removed, go into the four templates of QUESTIONS. Each is sent as one user message holding the
region's crop (`layoutsam_protocol.region_crops` of `protocol_image`) and the question, with no system prompt,
as the script sends them to MiniCPM-V-2.6. The colour, texture and shape questions are asked only after a yes
to the spatial one.

Where this differs from the script, on purpose:

* an answer counts only when it is, once surrounding whitespace, quotes and one final full stop are removed,
  exactly "yes" or "no" (any case); the script counts any answer containing "Yes" or "yes" (so "Yes, but no"
  and "eyes" are yes, and a refusal is no). An answer of another shape is sent back with the problem, at most
  `retries` times; after that, or after a failed request, the question is recorded as failed, counts as not a
  yes (as the script would count most such answers) and, for a spatial question, its region's attribute
  questions are not asked;
* the backends decode greedily (temperature 0); the script samples with MiniCPM's chat defaults and seed 42.

Every answer is recorded (`layoutsam_<dimension>_answers`, a JSON list of the raw answers, re-asks included)
with the status of each question: yes, no, failed or not asked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from eligen.pipeline.bench.items import BenchItem
from eligen.pipeline.bench.layoutsam_protocol import DIMENSIONS, protocol_image, region_crops, score_key, status_key
from eligen.pipeline.bench.scoring import ImageScore, Value

from .backends import OpenAIBackend, make_backend, redact
from .config import MllmSettings
from .errors import AgentError, AnswerError
from .grounding import clean_text
from .judge import public_url
from .messages import ChatBackend, Message
from .vision import prepare_image

NAME = "layoutsam-vqa"
QUESTIONS = {
    "spatial": 'Is the subject "{description}" present in the image? Strictly answer with "Yes" or "No", without '
               'any irrelevant words.',
    **{dimension: f'Is the subject in "{{description}}" in the image consistent with the {dimension} described in '
                  f'the detailed description: "{{detail}}"? Strictly answer with "Yes" or "No", without any '
                  f'irrelevant words. If the {dimension} is not mentioned in the detailed description, the answer '
                  f'is "Yes".' for dimension in ("color", "texture", "shape")},
}
RETRY_REQUEST = 'That answer could not be used: {problem}. Answer with exactly one word: "Yes" or "No".'
DEFAULT_RETRIES = 2
MAX_RETRIES = 10
MAX_ANSWER_CHARS = 200  # a yes or a no; a longer answer is refused unread
KEPT_ANSWER_CHARS = 300  # of each answer, in the record
ECHO_CHARS = 200  # of an unusable answer, sent back with the problem
MAX_ERROR_CHARS = 300
QUOTES = "\"'`*\u201c\u201d\u2018\u2019"  # straight, back and curly quotes, Markdown bold


def parse_yes_no(text: str) -> bool:
    """True for a yes, False for a no; AnswerError for any other answer."""
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerError(f"the answer is longer than {MAX_ANSWER_CHARS} characters")
    body = text.strip()
    body = body.strip(QUOTES).strip()
    body = body.removesuffix(".").strip().strip(QUOTES).strip()
    word = body.lower()
    if word in ("yes", "no"):
        return word == "yes"
    if not body:
        raise AnswerError("the answer is empty")
    raise AnswerError(f"expected exactly Yes or No, got {clean_text(text, 60)!r}")


@dataclass
class Asked:
    """One question's outcome: the verdict (None when it failed), every answer, and the failure's reason."""

    verdict: bool | None
    answers: list[str]
    error: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.verdict is None else "yes" if self.verdict else "no"


def questions(category: str, detail: str) -> dict[str, str]:
    """The four questions about a region, as the benchmark words them (every "/" removed from the captions)."""
    description, detail = category.replace("/", ""), detail.replace("/", "")
    return {dimension: template.format(description=description, detail=detail)
            for dimension, template in QUESTIONS.items()}


class LayoutSamJudge:
    """Asks a VLM LayoutSAM-Eval's questions about every region of an item's image."""

    name = NAME

    def __init__(self, backend: ChatBackend, settings: MllmSettings, file_names: Mapping[str, str],
                 retries: int = DEFAULT_RETRIES) -> None:
        if not 0 <= retries <= MAX_RETRIES:
            raise AgentError(f"the judge's retries must be 0 to {MAX_RETRIES}, got {retries}")
        self.backend, self.settings, self.file_names, self.retries = backend, settings, file_names, retries

    def describe(self) -> dict[str, Any]:
        """The backend, model, questions and rules (never the API key)."""
        settings = self.settings
        return {"backend": "local" if settings.local else "openai-compatible",
                "model": settings.local or settings.model, "base_url": public_url(settings.url),
                "max_pixels": self.backend.max_pixels, "temperature": 0, "questions": QUESTIONS,
                "retry_request": RETRY_REQUEST, "retries": self.retries,
                "answer_rule": "exactly yes or no (any case; surrounding whitespace, quotes and one full stop "
                               "removed); anything else re-asked, then failed (counts as not yes)",
                "image": "the generated image encoded as its benchmark file_name (JPEG at PIL's default quality "
                         "for .jpg), decoded, each region cut at int(fraction x side), no margin"}

    def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
        """Every region's four statuses, 0/1 scores and answers, in order."""
        seen = protocol_image(image, self.file_names[item.id])
        rows = []
        for instance, crop in zip(item.instances, region_crops(seen, item), strict=True):
            rows.append(self._region(crop, instance.category or instance.prompt, instance.prompt))
        return ImageScore(rows)

    def _region(self, crop: Image.Image | str, category: str, detail: str) -> dict[str, Value]:
        asked: dict[str, Asked | None] = dict.fromkeys(DIMENSIONS)
        wording = questions(category, detail)
        if isinstance(crop, str):
            asked["spatial"] = Asked(None, [], crop)
        else:
            sent = self._sent(crop)
            asked["spatial"] = self._ask(sent, wording["spatial"])
            if asked["spatial"].verdict:
                for dimension in DIMENSIONS[1:]:
                    asked[dimension] = self._ask(sent, wording[dimension])
        row: dict[str, Value] = {}
        for dimension, outcome in asked.items():
            row[score_key(dimension)] = 1.0 if outcome is not None and outcome.verdict else 0.0
            row[status_key(dimension)] = "not asked" if outcome is None else outcome.status
            row[f"layoutsam_{dimension}_answers"] = json.dumps(outcome.answers if outcome else [],
                                                               ensure_ascii=False)
            row[f"layoutsam_{dimension}_error"] = outcome.error if outcome else None
        return row

    def _sent(self, crop: Image.Image) -> Image.Image:
        """The crop as is, unless it is over the backend's pixel cap (then at the largest size under it)."""
        if crop.width * crop.height <= self.backend.max_pixels:
            return crop.convert("RGB")
        return prepare_image(crop, self.settings.family, self.backend.max_pixels)

    def _ask(self, crop: Image.Image, question: str) -> Asked:
        """Ask one question; re-ask after an unusable answer at most `retries` times; never raises."""
        messages = [Message("user", question, crop)]
        answers: list[str] = []
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                messages += [Message("assistant", answers[-1][:ECHO_CHARS] or "(empty)"),
                             Message("user", RETRY_REQUEST.format(problem=problem))]
            try:
                text = self.backend.complete(messages)
            except AgentError as exc:
                return Asked(None, answers, clean_text(redact(str(exc), self.settings.api_key), MAX_ERROR_CHARS))
            answers.append(clean_text(text, KEPT_ANSWER_CHARS) if isinstance(text, str) else "")
            try:
                return Asked(parse_yes_no(text), answers)
            except AnswerError as exc:
                problem = str(exc)
        tries = f"{self.retries + 1} tries" if self.retries else "1 try"
        return Asked(None, answers, f"unusable answer after {tries}: {problem}")


def make_layoutsam_judge(settings: MllmSettings, file_names: Mapping[str, str],
                         retries: int = DEFAULT_RETRIES) -> LayoutSamJudge:
    """The judge for the `--mllm-*` settings; without `--mllm-model` the server's model is asked for now."""
    backend = make_backend(settings)
    if isinstance(backend, OpenAIBackend) and settings.model is None:
        settings = settings.model_copy(update={"model": backend.served_model()})
    return LayoutSamJudge(backend, settings, file_names, retries)

"""Requests -> layouts and edits through the MLLM: design, refine, ground edits in an image, annotate.

Each answer is parsed and repaired by `grounding`, then validated as a `Layout` or `Edits` exactly as
a file would be. An unusable answer is sent back once with the problem; a second one is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from PIL import Image

from eligen.pipeline.layout import Edits, Layout, LayoutError, parse_edits, parse_layout
from eligen.pipeline.regions import unit_scale

from . import prompts
from .config import Family
from .errors import AgentError, AnswerError
from .grounding import Answer, Frame, clean_text, parse_answer
from .messages import ChatBackend, Message
from .vision import prepare_image, sent_size

DEFAULT_NEGATIVE = "worst quality, low quality, monochrome, blurry"
SOURCE = "<MLLM answer>"
ECHO_CHARS = 4_000  # of an unusable answer, sent back with the problem

T = TypeVar("T", bound=Layout)


@dataclass(frozen=True)
class Plan(Generic[T]):
    """A validated layout or edits planned by the MLLM, with the repairs made to the answer and its raw text."""

    layout: T
    notes: list[str] = field(default_factory=list)
    raw: str = ""


def _ask(backend: ChatBackend, messages: list[Message], build: Callable[[str], tuple[T, Answer]]) -> Plan[T]:
    """Ask, build; on an unusable answer ask once more with the problem, then give up with a clear message."""
    text = backend.complete(messages, prompts.ANSWER_SCHEMA)
    try:
        layout, answer = build(text)
        return Plan(layout, answer.notes, text)
    except AnswerError as exc:
        retry = [*messages, Message("assistant", text[:ECHO_CHARS] or "(empty)"),
                 Message("user", prompts.retry_request(str(exc)))]
    text = backend.complete(retry, prompts.ANSWER_SCHEMA)
    try:
        layout, answer = build(text)
    except AnswerError as exc:
        shown = clean_text(text, 120)
        raise AgentError(f"the MLLM's answer could not be used ({exc}), even after asking again; it answered: "
                         f"{shown!r}") from None
    return Plan(layout, [*answer.notes, "asked again after an unusable answer"], text)


def _validated(parse: Callable[[], T]) -> T:
    try:
        return parse()
    except LayoutError as exc:
        raise AnswerError(f"the layout is invalid: {exc.field}: {exc.expected}") from None


def _entities(answer: Answer) -> list[dict[str, Any]]:
    return [{"prompt": prompt, "box": list(box)} for prompt, box in answer.entities]


def _bounds(entity_points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in entity_points], [p[1] for p in entity_points]
    return min(xs), min(ys), max(xs), max(ys)


def describe_layout(layout: Layout, frame: Frame) -> dict[str, Any]:
    """The layout in the answer's JSON shape and the model's coordinates (polygons as their bounding boxes;
    mask and colour regions, which have no coordinates, are left out)."""
    sx, sy = unit_scale(layout)
    entities = []
    for entity in layout.entities:
        points = ([(entity.box[0], entity.box[1]), (entity.box[2], entity.box[3])] if entity.box is not None
                  else entity.polygon)
        if points:
            x1, y1, x2, y2 = _bounds([(x * sx, y * sy) for x, y in points])
            entities.append({"prompt": entity.prompt, "bbox_2d": frame.from_pixels((x1, y1, x2, y2))})
    return {"prompt": layout.prompt, "negative_prompt": layout.negative_prompt, "entities": entities}


def design_layout(backend: ChatBackend, family: Family, request: str, size: tuple[int, int] = (1024, 1024),
                  current: Layout | None = None, defaults: dict[str, Any] | None = None) -> Plan[Layout]:
    """A new layout for `request` on a canvas of `size` (width, height), with the layout keys in `defaults`
    (e.g. `model`, `steps`); with `current`, that layout changed as the request asks (its settings kept)."""
    canvas = current.size if current is not None else size
    frame = Frame(family, sent_size(canvas, family, backend.max_pixels), canvas)
    if current is None:
        text = prompts.design_request(request, frame)
        base: dict[str, Any] = {**(defaults or {}), "size": list(canvas)}
        default_prompt, default_negative = request, DEFAULT_NEGATIVE
    else:
        text = prompts.refine_request(request, describe_layout(current, frame))
        base = current.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
        base.pop("color_mask", None)
        default_prompt, default_negative = current.prompt, current.negative_prompt or DEFAULT_NEGATIVE

    def build(answer_text: str) -> tuple[Layout, Answer]:
        answer = parse_answer(answer_text, frame, default_prompt)
        data = {**base, "size": list(canvas), "units": "px", "prompt": answer.prompt,
                "negative_prompt": answer.negative_prompt or default_negative, "entities": _entities(answer)}
        return _validated(lambda: parse_layout(data, SOURCE)), answer

    messages = [Message("system", prompts.design_system(frame)), Message("user", text)]
    return _ask(backend, messages, build)


def plan_edits(backend: ChatBackend, family: Family, request: str, image: Image.Image,
               negative_prompt: str = DEFAULT_NEGATIVE) -> Plan[Edits]:
    """An edits file for `eligen inpaint`: the regions of `image` to repaint for `request`, in its pixels."""
    shown = prepare_image(image, family, backend.max_pixels)
    frame = Frame(family, shown.size, image.size)

    def build(answer_text: str) -> tuple[Edits, Answer]:
        answer = parse_answer(answer_text, frame, request)
        data = {"prompt": answer.prompt, "negative_prompt": answer.negative_prompt or negative_prompt,
                "entities": _entities(answer)}
        return _validated(lambda: parse_edits(data, image.size, SOURCE)), answer

    messages = [Message("system", prompts.edit_system(frame)),
                Message("user", prompts.edit_request(request), shown)]
    return _ask(backend, messages, build)


def annotate_image(backend: ChatBackend, family: Family, image: Image.Image) -> Plan[Edits]:
    """A caption and grounded entities of `image`, as a layout in its pixels (the size is the image's, which
    need not be a multiple of 16: the layout is checked as an edits file is)."""
    shown = prepare_image(image, family, backend.max_pixels)
    frame = Frame(family, shown.size, image.size)

    def build(answer_text: str) -> tuple[Edits, Answer]:
        answer = parse_answer(answer_text, frame, None)
        data = {"prompt": answer.prompt, "entities": _entities(answer)}
        return _validated(lambda: parse_edits(data, image.size, SOURCE)), answer

    messages = [Message("system", prompts.annotate_system(frame)),
                Message("user", prompts.ANNOTATE_REQUEST, shown)]
    return _ask(backend, messages, build)

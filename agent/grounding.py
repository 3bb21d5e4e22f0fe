"""MLLM answers -> entities with pixel boxes, per Qwen-VL family, validated and repaired.

Conventions (docs/agent.md): Qwen2-VL and Qwen3-VL answer boxes in 0..1000 relative coordinates;
Qwen2.5-VL in absolute pixels of the image it was sent (sent at a size its processor leaves
unchanged, so the mapping back is the plain ratio). Qwen2-VL may also answer in its native syntax
`<|object_ref_start|>a cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, or the same
with the special tokens stripped by the server (`a cat(x1,y1),(x2,y2)`).

Every answer is untrusted data: it can only become prompt strings and clamped box numbers.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .config import Family
from .errors import AnswerError

MAX_ANSWER_CHARS = 1_000_000  # longer answers are cut before parsing
MAX_RAW_ENTITIES = 1_000  # entries looked at; the rest of a flood is ignored
MAX_ENTITIES = 12  # entities kept after merging (the paper's data has 1-5, rarely over 6)
MAX_PROMPT_CHARS = 1_000  # global prompt
MAX_ENTITY_PROMPT_CHARS = 300
MIN_BOX_SIDE = 16  # px: one FLUX token, so every kept box covers a token
MERGE_IOU = 0.5  # same prompt and boxes overlapping this much: one entity
RELATIVE_SCALE = 1000  # Qwen2-VL / Qwen3-VL coordinate range

FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*(.*?)```", re.DOTALL)
NUMBER = r"\s*(-?\d{1,7}(?:\.\d{1,6})?)\s*"
COORDS = re.compile(rf"\({NUMBER},{NUMBER}\)\s*,\s*\({NUMBER},{NUMBER}\)")
BOX_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>")
PROMPT_KEYS = ("prompt", "caption", "global_prompt", "description")
ENTITY_LIST_KEYS = ("entities", "objects", "regions")
ENTITY_PROMPT_KEYS = ("prompt", "label", "description", "name")
BOX_KEYS = ("bbox_2d", "box", "bbox")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Frame:
    """How the model's coordinates relate to the pixels wanted: the family, the size the model was
    shown (or told) and the target canvas or image size, all (width, height)."""

    family: Family
    sent: tuple[int, int]
    target: tuple[int, int]

    @property
    def relative(self) -> bool:
        return self.family != "qwen2.5-vl"

    def describe(self) -> str:
        """The coordinate convention, in words, for the model's instructions."""
        if self.relative:
            return ("integers from 0 to 1000, relative to the width and height (0,0 is the top-left corner, "
                    "1000,1000 the bottom-right corner)")
        return (f"integer pixel coordinates of a {self.sent[0]}x{self.sent[1]} image (0,0 is the top-left corner, "
                f"{self.sent[0]},{self.sent[1]} the bottom-right corner)")

    def to_pixels(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box in the model's coordinates -> target pixels (not yet clamped)."""
        width, height = self.target
        scale_x, scale_y = (RELATIVE_SCALE, RELATIVE_SCALE) if self.relative else self.sent
        x1, y1, x2, y2 = box
        return x1 * width / scale_x, y1 * height / scale_y, x2 * width / scale_x, y2 * height / scale_y

    def from_pixels(self, box: tuple[float, float, float, float]) -> list[int]:
        """Target pixels -> the model's coordinates (to show it a current layout)."""
        width, height = self.target
        scale_x, scale_y = (RELATIVE_SCALE, RELATIVE_SCALE) if self.relative else self.sent
        x1, y1, x2, y2 = box
        return [round(x1 * scale_x / width), round(y1 * scale_y / height), round(x2 * scale_x / width),
                round(y2 * scale_y / height)]


@dataclass
class Answer:
    """A usable answer: a global prompt and entities with integer pixel boxes in the target frame."""

    prompt: str
    negative_prompt: str | None
    entities: list[tuple[str, Box]]
    notes: list[str] = field(default_factory=list)  # repairs made, for the person to see


def clean_text(value: Any, limit: int) -> str:
    """A model-given string made safe to show and store: control characters (terminal escapes included)
    become spaces, whitespace is collapsed, and the length is capped."""
    if not isinstance(value, str):
        return ""
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in value[:limit * 2])
    return " ".join(text.split())[:limit].strip()


def _json_candidates(text: str) -> list[str]:
    """Strings that may hold the JSON answer: fenced blocks, then the outermost braces, then the whole."""
    candidates = [match.strip() for match in FENCE.findall(text)]
    spans = [(text.find(opening), text.rfind(closing)) for opening, closing in ("{}", "[]")]
    candidates += [text[start:end + 1] for start, end in sorted(spans) if 0 <= start < end]
    candidates.append(text.strip())
    return candidates


def _load_json(text: str) -> Any:
    for candidate in _json_candidates(text):
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):  # includes ints too long to convert
            continue
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _raw_box(item: dict[str, Any]) -> tuple[float, float, float, float] | None:
    value = next((item[key] for key in BOX_KEYS if key in item), None)
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(p, list | tuple) for p in value):
        value = [*value[0], *value[1]]  # [[x1, y1], [x2, y2]]
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    numbers = [_number(v) for v in value]
    if any(n is None for n in numbers):
        return None
    return numbers[0], numbers[1], numbers[2], numbers[3]


def _first_string(item: dict[str, Any], keys: tuple[str, ...], limit: int) -> str:
    return next((text for key in keys if (text := clean_text(item.get(key), limit))), "")


def repair_box(box: tuple[float, float, float, float], size: tuple[int, int], notes: list[str]) -> Box | None:
    """Reorder, clamp to the canvas, round to pixels and grow to MIN_BOX_SIDE; None for an empty box."""
    width, height = size
    x1, y1, x2, y2 = box
    if x1 > x2 or y1 > y2:
        notes.append("reordered an inverted box")
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    clamped = max(0.0, min(x1, width)), max(0.0, min(y1, height)), max(0.0, min(x2, width)), max(0.0, min(y2, height))
    if clamped != (x1, y1, x2, y2):
        notes.append("clamped a box to the canvas")
    x1, y1, x2, y2 = (round(v) for v in clamped)
    if x2 <= x1 or y2 <= y1:
        notes.append("dropped an empty box")
        return None
    side_x, side_y = min(MIN_BOX_SIDE, width), min(MIN_BOX_SIDE, height)
    if x2 - x1 < side_x or y2 - y1 < side_y:
        notes.append(f"grew a box smaller than {MIN_BOX_SIDE} px")
        x1, x2 = _grow(x1, x2, side_x, width)
        y1, y2 = _grow(y1, y2, side_y, height)
    return x1, y1, x2, y2


def _grow(low: int, high: int, side: int, limit: int) -> tuple[int, int]:
    if high - low >= side:
        return low, high
    low = max(0, min((low + high - side) // 2, limit - side))
    return low, low + side


def _iou(a: Box, b: Box) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area else 0.0


def merge_duplicates(entities: list[tuple[str, Box]], notes: list[str]) -> list[tuple[str, Box]]:
    """Entities with the same prompt (ignoring case and spacing) whose boxes overlap by IoU >= MERGE_IOU become
    one entity over the union of their boxes."""
    merged: list[tuple[str, Box]] = []
    for prompt, box in entities:
        key = prompt.casefold()
        for index, (other, other_box) in enumerate(merged):
            if other.casefold() == key and _iou(box, other_box) >= MERGE_IOU:
                union = (min(box[0], other_box[0]), min(box[1], other_box[1]), max(box[2], other_box[2]),
                         max(box[3], other_box[3]))
                merged[index] = (other, union)
                notes.append(f"merged a duplicate of {other!r}")
                break
        else:
            merged.append((prompt, box))
    return merged


def _entities_from_json(items: list[Any], frame: Frame, notes: list[str]) -> list[tuple[str, Box]]:
    entities: list[tuple[str, Box]] = []
    if len(items) > MAX_RAW_ENTITIES:
        notes.append(f"ignored {len(items) - MAX_RAW_ENTITIES} entries past the first {MAX_RAW_ENTITIES}")
    for item in items[:MAX_RAW_ENTITIES]:
        if not isinstance(item, dict):
            notes.append("dropped an entity that is not an object")
            continue
        prompt = _first_string(item, ENTITY_PROMPT_KEYS, MAX_ENTITY_PROMPT_CHARS)
        raw = _raw_box(item)
        if not prompt or raw is None:
            notes.append("dropped an entity without a prompt or a box of four numbers")
            continue
        box = repair_box(frame.to_pixels(raw), frame.target, notes)
        if box is not None:
            entities.append((prompt, box))
    return entities


def _entities_from_syntax(text: str, frame: Frame, notes: list[str]) -> list[tuple[str, Box]]:
    """Qwen2-VL's box syntax, tagged or with the special tokens stripped: each `(x1,y1),(x2,y2)` takes the
    text before it on its line (after the previous box) as its label."""
    for token in BOX_TOKENS:
        text = text.replace(token, "\n" if token == "<|box_end|>" else "")
    entities: list[tuple[str, Box]] = []
    previous = 0
    for count, match in enumerate(COORDS.finditer(text)):
        if count >= MAX_RAW_ENTITIES:
            break
        before = text[previous:match.start()].rsplit("\n", 1)[-1]
        previous = match.end()
        label = clean_text(re.sub(r"^(?:and|,)\s+", "", before.strip(" \t:-,.;*")), MAX_ENTITY_PROMPT_CHARS)
        raw = tuple(float(value) for value in match.groups())
        if not label:
            notes.append("dropped a box without a label")
            continue
        box = repair_box(frame.to_pixels(raw), frame.target, notes)  # type: ignore[arg-type]
        if box is not None:
            entities.append((label, box))
    return entities


def parse_answer(text: str | None, frame: Frame, default_prompt: str | None = None) -> Answer:
    """Validate and repair one answer. Raises AnswerError (with a message for the model) when unusable.

    `default_prompt` is the global prompt when the answer gives none (the box syntax carries none).
    """
    text = (text or "")[:MAX_ANSWER_CHARS]
    notes: list[str] = []
    data = _load_json(text)
    if isinstance(data, list):
        data = {ENTITY_LIST_KEYS[0]: data}
    if isinstance(data, dict):
        items = next((data[key] for key in ENTITY_LIST_KEYS if key in data), [])
        if not isinstance(items, list):
            raise AnswerError("`entities` must be a list of objects with `prompt` and `bbox_2d`")
        entities = _entities_from_json(items, frame, notes)
        prompt = _first_string(data, PROMPT_KEYS, MAX_PROMPT_CHARS) or clean_text(default_prompt, MAX_PROMPT_CHARS)
        negative = clean_text(data.get("negative_prompt"), MAX_PROMPT_CHARS) or None
    elif COORDS.search(text):
        entities = _entities_from_syntax(text, frame, notes)
        prompt, negative = clean_text(default_prompt, MAX_PROMPT_CHARS), None
    else:
        raise AnswerError("the answer is not a JSON object")
    if not prompt:
        raise AnswerError("the JSON object has no non-empty `prompt` describing the whole image")
    if not entities:
        raise AnswerError("no entity has a non-empty `prompt` and a usable `bbox_2d` of four numbers")
    entities = merge_duplicates(entities, notes)
    if len(entities) > MAX_ENTITIES:
        notes.append(f"kept the first {MAX_ENTITIES} of {len(entities)} entities")
        entities = entities[:MAX_ENTITIES]
    return Answer(prompt, negative, entities, sorted(set(notes), key=notes.index))

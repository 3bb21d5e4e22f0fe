"""What the MLLM is asked, and the JSON shape its answers should have (checked again on our side)."""

from __future__ import annotations

import json
from typing import Any

from .grounding import MAX_ENTITIES, Frame

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "negative_prompt": {"type": "string"},
        "entities": {
            "type": "array",
            "maxItems": MAX_ENTITIES,
            "items": {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string"},
                    "bbox_2d": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4},
                },
                "required": ["prompt", "bbox_2d"],
            },
        },
    },
    "required": ["prompt", "entities"],
}

SHAPE = ('{"prompt": "...", "entities": [{"prompt": "...", "bbox_2d": [x1, y1, x2, y2]}, ...]}')


def _rules(frame: Frame) -> str:
    return (f"Answer with one JSON object and nothing else, shaped like {SHAPE}. Boxes are [x1, y1, x2, y2] in "
            f"{frame.describe()}, with x1 < x2 and y1 < y2. Use at most {MAX_ENTITIES} entities, one per "
            "distinct object; entity prompts are short descriptions of one object each (colour, material, "
            "look).")


def design_system(frame: Frame) -> str:
    """Instructions for designing or changing a layout for the image generator."""
    return ("You design layouts for an image generator that paints each entity inside its own box. `prompt` "
            "describes the whole image in one or two sentences and mentions every entity. Place the boxes so "
            "the scene is plausible: sizes in proportion, objects resting on what supports them. "
            + _rules(frame))


def design_request(request: str, frame: Frame) -> str:
    return (f"The canvas is {frame.target[0]}x{frame.target[1]} pixels (width x height). Design a layout for "
            f"this request: {request}")


def refine_request(request: str, current: dict[str, Any]) -> str:
    return ("This is the current layout, in the same JSON shape and coordinates:\n"
            f"{json.dumps(current, ensure_ascii=False)}\n"
            f"Change it as asked and answer with the complete new layout (keep what the request does not "
            f"change): {request}")


def edit_system(frame: Frame) -> str:
    """Instructions for grounding an edit request in an image."""
    return ("You plan edits of a photo for an inpainting tool that repaints boxes of it. Look at the image, find "
            "the regions that must change to carry out the request, and say what to paint in each. `prompt` "
            "describes the whole image as it should look after the edit; each entity's `prompt` says what its "
            "box should show after the edit. Boxes cover the object to change, or the free space where a new "
            "object goes. " + _rules(frame))


def edit_request(request: str) -> str:
    return f"Edit request: {request}"


def annotate_system(frame: Frame) -> str:
    """Instructions for captioning an image and grounding its entities (training data)."""
    return ("You annotate images for training an image generator. `prompt` is a detailed one-sentence caption of "
            "the whole image; each entity is a salient object with a short description and a tight box. "
            + _rules(frame))


ANNOTATE_REQUEST = "Caption this image and ground its main entities."


def retry_request(problem: str) -> str:
    """Asked once after an unusable answer."""
    return (f"That answer could not be used: {problem}. Answer again with only the JSON object, shaped like "
            f"{SHAPE}.")


JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"correct": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["correct", "reason"],
    "additionalProperties": False,
}

JUDGE_SHAPE = '{"correct": true, "reason": "..."}'

JUDGE_SYSTEM = ("You check the output of an image generator, one entity at a time. You are shown a region cut from a "
                "generated image (with a thin margin around it) and the description of the entity that was meant to "
                "be generated there. Decide whether the region correctly shows that entity: the right kind of "
                "object, every attribute the description names (colour, material, shape, number) right, and drawn "
                "well enough to be recognised (not malformed, not merged into something else). Answer with one "
                f"JSON object and nothing else, shaped like {JUDGE_SHAPE}: `correct` is true or false, `reason` is "
                "one short sentence.")

JUDGE_REQUEST = "Description: {prompt}. Is this entity correctly generated in the region shown?"


def judge_request(prompt: str) -> str:
    """The question about one entity; its prompt is quoted as a JSON string, so it reads as data."""
    return JUDGE_REQUEST.format(prompt=json.dumps(prompt, ensure_ascii=False))


def judge_retry_request(problem: str) -> str:
    """Asked after an unusable verdict."""
    return (f"That answer could not be used: {problem}. Answer again with only the JSON object, shaped like "
            f"{JUDGE_SHAPE}.")

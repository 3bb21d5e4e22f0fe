"""Warnings for a layout its model will not draw as written; the run goes on, the person is told why.

* words outside the vocabulary a model folder declares (the shapes model knows twelve words; others are
  split into pieces it never saw),
* prompts longer than the model reads (T5's `max_sequence_length`, CLIP's 77 tokens for the pooled vector,
  Qwen2.5-VL's 4096 tokens of the global prompt and `max_sequence_length` of an entity's),
* more entities than the model was trained with (`max_entities`), regions smaller than one token, regions that
  share tokens.

Each is a `LayoutWarning` (Python's `warnings`) whose message reads `file: field: what happens`, so a
command line can show it and a script can filter it. No torch here: token counts come from the caller.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .layout import Layout
from .model_info import declaration
from .regions import PATCH

MAX_LISTED = 8  # entities named in one warning before "and N more"


class LayoutWarning(UserWarning):
    """The model will read or draw part of a layout differently from what it says."""


def _warn(source: str, field: str, message: str, hint: str | None = None) -> None:
    warnings.warn(f"{source}: {field}: {message}" + (f"\n  hint: {hint}" if hint else ""), LayoutWarning,
                  stacklevel=3)


def prompt_fields(layout: Layout) -> list[tuple[str, str]]:
    """(field, text) of every prompt the model reads: the global prompt, each entity's, and the negative
    prompt when CFG uses it."""
    fields = [("prompt", layout.prompt)] + [(f"entities[{i}].prompt", e.prompt) for i, e in enumerate(layout.entities)]
    if layout.cfg > 1.0 and layout.negative_prompt:
        fields.append(("negative_prompt", layout.negative_prompt))
    return fields


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def warn_unknown_words(layout: Layout, vocabulary: list[str], model: str, source: str = "<layout>") -> None:
    """Warn, per prompt, of the words (split at whitespace, case kept) that are not in `vocabulary`."""
    known = set(vocabulary)
    for field, text in prompt_fields(layout):
        unknown = list(dict.fromkeys(word for word in text.split() if word not in known))
        if unknown:
            words, many = ", ".join(repr(w) for w in unknown), len(unknown) > 1
            _warn(source, field, f"{len(unknown)} word{'s' * many} the model {model} does not know: {words}; it reads "
                  f"{'them' if many else 'it'} as pieces it was never trained on", f"it knows: {' '.join(vocabulary)}")


def warn_truncated(layout: Layout, count_tokens: Callable[[str], int], limit: int, encoder: str,
                   source: str = "<layout>", fields: tuple[str, ...] | None = None) -> None:
    """Warn of each prompt longer than `limit` tokens of `encoder` (`count_tokens`: the untruncated count,
    special tokens included); `fields` limits the prompts checked (`prompt`, `negative_prompt`, and `entities` for
    every entity's; default: all that the model reads)."""
    for field, text in prompt_fields(layout):
        kind = "entities" if field.startswith("entities[") else field
        if fields is not None and kind not in fields:
            continue
        n = count_tokens(text)
        if n > limit:
            dropped = n - limit
            lost = f"the last {dropped} tokens are" if dropped > 1 else "the last token is"
            _warn(source, field, f"{n} {encoder} tokens, the model reads {limit}: {lost} dropped", "shorten the prompt")


def warn_entities(layout: Layout, masks: list[np.ndarray], scale_factor: int, max_entities: int | None,
                  source: str = "<layout>") -> None:
    """Warn when the layout has more entities than the model was trained with, and of regions (pixel masks
    at canvas size) smaller than one token."""
    if max_entities is not None and len(layout.entities) > max_entities:
        _warn(source, "entities", f"{len(layout.entities)} entities, the model was trained with at most "
              f"{max_entities} per image: expect entities to merge or go missing")
    token = scale_factor * PATCH
    small = [f"entities[{i}]" for i, mask in enumerate(masks) if int(mask.sum()) < token * token]
    if small:
        _warn(source, "entities", f"{len(small)} region{'s' * (len(small) > 1)} smaller than one token "
              f"({token}x{token} px on this model): {_listed(small)}; the model can hardly draw them there",
              "make the regions larger")


def check_layout(layout: Layout, masks: list[np.ndarray], scale_factor: int, source: str = "<layout>",
                 token_masks: np.ndarray | None = None) -> None:
    """Every warning that needs no loaded model: the declared vocabulary and entity count, region sizes, and (with
    the token regions) regions that share tokens."""
    declared = declaration(layout.model)
    if declared.vocabulary is not None:
        warn_unknown_words(layout, declared.vocabulary, layout.model, source)
    warn_entities(layout, masks, scale_factor, declared.max_entities, source)
    shared = [f"entities[{j}] with entities[{i}] ({n})" for i, j, n in overlaps(token_masks)] \
        if token_masks is not None else []
    if shared:
        _warn(source, "entities", f"regions sharing tokens (both prompts reach them; allowed): {_listed(shared)}")


@dataclass(frozen=True)
class RegionWarning:
    """A warning about one entity's region: the field it is about and what to know."""

    field: str
    message: str


def region_warnings(layout: Layout, pixel_masks: list[np.ndarray], token_masks: np.ndarray, scale_factor: int
                    ) -> list[RegionWarning]:
    """Per entity, for a display next to its field (the studio): a region smaller than one token (the model sees
    whole tokens), and regions sharing tokens (both prompts reach those tokens; allowed, but often a mistake)."""
    token_side = scale_factor * PATCH
    warnings = []
    for i, (entity, mask) in enumerate(zip(layout.entities, pixel_masks, strict=True)):
        area = int(mask.sum())
        if area < token_side * token_side:
            cells = int(token_masks[i].sum())
            warnings.append(RegionWarning(
                f"entities[{i}].{entity.region_kind}",
                f"the region covers {area} px, less than one {token_side}x{token_side}-px token; the model sees "
                f"it as {cells} whole token{'s' if cells != 1 else ''}"))
    for i, j, shared in overlaps(token_masks):
        warnings.append(RegionWarning(
            f"entities[{j}].{layout.entities[j].region_kind}",
            f"shares {shared} token{'s' if shared != 1 else ''} with entities[{i}]: both prompts reach "
            "them (allowed; regions may overlap)"))
    return warnings


def overlaps(token_masks: np.ndarray) -> list[tuple[int, int, int]]:
    """(i, j, tokens shared) for each pair of entities i < j whose token regions meet."""
    k = len(token_masks)
    pairs = [(i, j, int((token_masks[i] & token_masks[j]).sum())) for i in range(k) for j in range(i + 1, k)]
    return [pair for pair in pairs if pair[2]]

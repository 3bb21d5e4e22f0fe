"""A layout's sampling defaults from its model: what the layout leaves out, the model declares.

The `Layout` schema's own defaults (1024x1024, 50 steps, CFG 3.0, no negative prompt) are FLUX.1-dev's. For every
key the layout did not set itself, a model folder's `eligen.json` (`size`, `steps`, `cfg`; the built-in `shapes`
model: 128x128) comes first, then the model's family (`families/defaults.py`; Qwen-Image: 40 steps, CFG 4, the
negative prompt " "). Values set in the file or on the command line always win.
No torch here: `eligen preview` resolves layouts the same way.
"""

from __future__ import annotations

from typing import TypeVar

from .layout import Layout
from .model_info import declaration, model_family

MODEL_DEFAULT_KEYS = ("size", "steps", "cfg")  # the layout keys a model folder may give defaults for
FAMILY_DEFAULT_KEYS = (*MODEL_DEFAULT_KEYS, "negative_prompt")  # and its family

L = TypeVar("L", bound=Layout)


def with_model_defaults(layout: L, model: str | None = None) -> L:
    """`layout` with its unset keys taken from `model`'s declaration, else its family (default model: the
    layout's own); unchanged when neither differs from the schema's defaults."""
    model = model or layout.model
    declared, family = declaration(model), model_family(model)
    update = {}
    for key in FAMILY_DEFAULT_KEYS:
        if key in layout.model_fields_set:
            continue
        value = getattr(declared, key, None)
        value = getattr(family, key) if value is None else value
        if value != getattr(layout, key):
            update[key] = value
    return layout.model_copy(update=update) if update else layout

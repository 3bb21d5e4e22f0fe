"""A layout's sampling defaults from its model: what the layout leaves out, the model folder declares.

The `Layout` schema's own defaults (1024x1024, 50 steps, CFG 3.0) are FLUX.1-dev's. A model folder whose
`eligen.json` declares `size`, `steps` or `cfg` (the built-in shapes models: 64x64) supplies those instead,
for every key the layout did not set itself. Values set in the file or on the command line always win.
No torch here: `eligen preview` resolves layouts the same way.
"""

from __future__ import annotations

from typing import TypeVar

from .layout import Layout
from .model_info import declaration

MODEL_DEFAULT_KEYS = ("size", "steps", "cfg")  # the layout keys a model folder may give defaults for

L = TypeVar("L", bound=Layout)


def with_model_defaults(layout: L, model: str | None = None) -> L:
    """`layout` with the unset keys of MODEL_DEFAULT_KEYS taken from `model`'s declaration (default: the
    layout's own model); unchanged when the model declares none of them."""
    declared = declaration(model or layout.model)
    update = {key: getattr(declared, key) for key in MODEL_DEFAULT_KEYS
              if key not in layout.model_fields_set and getattr(declared, key) is not None}
    return layout.model_copy(update=update) if update else layout

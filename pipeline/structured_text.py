"""Reading YAML and JSON text whose nesting may be hostile: data nested thousands of levels deep exhausts Python's
recursion limit inside the parsers; here it becomes a `NestingError` (a ValueError) every reader can report as bad
input, instead of a RecursionError traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import yaml


class NestingError(ValueError):
    """The text nests lists or mappings more deeply than the parser can follow."""

    def __init__(self) -> None:
        super().__init__(f"expected lists and mappings nested at most a few hundred levels deep; these nest more "
                         f"deeply than Python's recursion limit ({sys.getrecursionlimit()}) can follow")


def load_yaml(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """`text` parsed by `loader` (a SafeLoader or a subclass of it); NestingError when it nests too deeply."""
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader, by the annotation
    except RecursionError:
        raise NestingError() from None


def load_json(text: str | bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """`json.loads(text)`; NestingError when it nests too deeply."""
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise NestingError() from None

"""Layouts and edits as the YAML files `eligen generate` and `eligen inpaint` read, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from eligen.pipeline.layout import Edits, Layout
from eligen.pipeline.outputs import check_writable, write_atomic


class _Dumper(yaml.SafeDumper):
    """A SafeDumper that writes short lists of numbers on one line: `box: [60, 300, 560, 700]`."""


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flat = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def _tidy(value: Any) -> Any:
    """Whole floats as ints, recursively (boxes are validated as floats but planned in whole pixels)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    return value


def layout_data(layout: Layout) -> dict[str, Any]:
    """The layout as file data: `version` and (for layouts, not edits) `size` first, then what differs from
    the defaults."""
    data = layout.model_dump(mode="json", exclude_defaults=True)
    head: dict[str, Any] = {"version": 1}
    if isinstance(layout, Edits):
        data.pop("size", None)  # an edits file takes its size from the image
    else:
        head["size"] = list(layout.size)
    data["prompt"] = layout.prompt
    data["entities"] = [e.model_dump(mode="json", exclude_none=True) for e in layout.entities]
    return _tidy({**head, **data})


def dump_layout(layout: Layout) -> str:
    """The layout as YAML text."""
    return yaml.dump(layout_data(layout), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def write_layout(layout: Layout, path: Path, overwrite: bool = False) -> None:
    """Write the layout YAML atomically; an existing file is refused unless `overwrite`."""
    check_writable([path], overwrite)
    text = dump_layout(layout)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

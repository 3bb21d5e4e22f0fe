"""Layout files (version 1): schema, loading and the errors a person can act on.

A layout is a global prompt plus entities, each a prompt with exactly one region (box, polygon,
mask PNG or a colour of a colour-coded PNG). This module validates the file and nothing more: it
imports neither torch nor diffusers, so `eligen preview` stays fast.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
DATA_URL_PREFIX = "data:image/png;base64,"
REGION_KEYS = ("box", "polygon", "mask", "color")


class LayoutError(ValueError):
    """A layout problem a person can fix: names the file, the field and what was expected."""

    def __init__(self, source: str, field: str, expected: str, hint: str | None = None) -> None:
        self.source, self.field, self.expected, self.hint = source, field, expected, hint
        message = f"{source}: {field}: {expected}"
        if hint:
            message += f"\n  hint: {hint}"
        super().__init__(message)


PositiveInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, lt=2**64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class LoraSpec(_Strict):
    """A LoRA to apply: a local file, a hub repo id (with `file`), or `repo-id/path/in/repo.safetensors`."""

    path: str = Field(min_length=1)
    file: str | None = None
    scale: float = 1.0


class Entity(_Strict):
    """One entity: a prompt and exactly one region."""

    prompt: str = Field(min_length=1)
    box: tuple[float, float, float, float] | None = None
    polygon: list[tuple[float, float]] | None = Field(default=None, min_length=3)
    mask: str | None = Field(default=None, min_length=1)
    color: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a non-empty prompt")
        return value

    @field_validator("color")
    @classmethod
    def _hex_colour(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise ValueError(f"expected a colour written as \"#rrggbb\", got {value!r}")
        return value.lower() if value else value

    @field_validator("box")
    @classmethod
    def _box_ordered(cls, value: tuple[float, float, float, float] | None) -> tuple | None:
        if value is not None and not (value[0] < value[2] and value[1] < value[3]):
            raise ValueError(f"expected [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _one_region(self) -> Entity:
        given = [key for key in REGION_KEYS if getattr(self, key) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"expected exactly one region (box, polygon, mask or color), found {found}")
        return self

    @property
    def region_kind(self) -> str:
        """Which of box, polygon, mask or color this entity uses."""
        return next(key for key in REGION_KEYS if getattr(self, key) is not None)


class Layout(_Strict):
    """A validated version-1 layout. Coordinates stay in the file's units until rasterised."""

    version: Literal[1] = 1
    model: str = DEFAULT_MODEL
    loras: list[LoraSpec] = []
    size: tuple[PositiveInt, PositiveInt] = (1024, 1024)
    seed: Seed | list[Seed] | None = None
    steps: PositiveInt = 50
    cfg: float = Field(default=3.0, ge=1.0)
    guidance: float = Field(default=3.5, ge=0.0)
    schedule: Literal["flux", "diffsynth"] = "flux"
    units: Literal["px", "fraction", "permille"] = "px"
    prompt: str
    negative_prompt: str = ""
    max_sequence_length: PositiveInt | None = Field(default=None, le=512)
    regions_on_negative: bool = False
    color_mask: str | None = None
    entities: list[Entity] = []

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] % 16 or value[1] % 16:
            raise ValueError(f"expected [width, height], both multiples of 16, got {list(value)}")
        return value

    @field_validator("seed")
    @classmethod
    def _seed_list_not_empty(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, list) and not value:
            raise ValueError("expected an integer or a non-empty list of integers")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a non-empty prompt")
        return value

    @model_validator(mode="after")
    def _colour_mask_given(self) -> Layout:
        if any(e.color is not None for e in self.entities) and self.color_mask is None:
            raise ValueError("entities use `color` regions, so the top-level `color_mask` PNG is required")
        return self

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    @property
    def seeds(self) -> list[int]:
        """The seeds as a list (empty when none was given)."""
        if self.seed is None:
            return []
        return list(self.seed) if isinstance(self.seed, list) else [self.seed]


def _field_name(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as `entities[2].box`."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            name += f".{part}" if name else str(part)
    return name or "(top level)"


def _explain(error: dict[str, Any]) -> tuple[str, str | None]:
    """Turn one pydantic error into an expectation and an optional hint."""
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        where = next((p for p in error["loc"] if p in ("entities", "loras")), None)
        model = {"entities": Entity, "loras": LoraSpec}.get(where, Layout)
        return "unknown key", f"known keys here: {', '.join(model.model_fields)}"
    if kind == "missing":
        return "this key is required", None
    if kind == "literal_error":
        return f"expected {message.removeprefix('Input should be ')}, got {error['input']!r}", None
    if kind.startswith("value_error"):
        return message.removeprefix("Value error, "), None
    return f"{message[0].lower()}{message[1:]}, got {error['input']!r}", None


def parse_layout(data: Any, source: str = "<layout>") -> Layout:
    """Validate already-parsed YAML data (a mapping) as a version-1 layout."""
    if not isinstance(data, dict):
        raise LayoutError(source, "(top level)", f"expected a mapping of keys, got {type(data).__name__}")
    if "version" in data and data["version"] != 1:
        raise LayoutError(source, "version", f"expected 1, got {data['version']!r}",
                          "this eligen reads version-1 layouts")
    try:
        return Layout.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        expected, hint = _explain(first)
        others = len(exc.errors()) - 1
        if others:
            expected += f" (and {others} more problem{'s' if others > 1 else ''})"
        raise LayoutError(source, _field_name(first["loc"]), expected, hint) from None


def read_layout_data(path: Path) -> dict[str, Any]:
    """Read a layout YAML file safely, with errors that name the file."""
    source = str(path)
    if not path.is_file():
        raise LayoutError(source, "(file)", "expected an existing layout file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LayoutError(source, "(file)", "expected a UTF-8 text YAML file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise LayoutError(source, "(yaml)", f"expected valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise LayoutError(source, "(file)", "expected a layout, the file is empty")
    return data


def load_layout(path: str | Path, overrides: dict[str, Any] | None = None) -> Layout:
    """Load, merge command-line overrides into, and validate a layout file."""
    path = Path(path)
    data = read_layout_data(path)
    if isinstance(data, dict) and overrides:
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_layout(data, str(path))


def layout_to_data(layout: Layout) -> dict[str, Any]:
    """The layout as plain data (what YAML or JSON would hold), defaults included."""
    return layout.model_dump(mode="json")

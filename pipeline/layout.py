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
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from .structured_text import NestingError, load_yaml

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
DATA_URL_PREFIX = "data:image/png;base64,"
REGION_KEYS = ("box", "polygon", "mask", "color")
MAX_SIDE = 4096  # px; larger canvases are far outside what FLUX was trained on


class LayoutError(ValueError):
    """A layout problem a person can fix: names the file, the field and what was expected."""

    def __init__(self, source: str, field: str, expected: str, hint: str | None = None) -> None:
        self.source, self.field, self.expected, self.hint = source, field, expected, hint
        where = source if field == source else f"{source}: {field}"  # a command-line option is its own field
        message = f"{where}: {expected}"
        if hint:
            message += f"\n  hint: {hint}"
        super().__init__(message)


PositiveInt = Annotated[StrictInt, Field(gt=0)]
Side = Annotated[StrictInt, Field(gt=0, le=MAX_SIDE)]
SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64)
# A layout's sigma schedules: the model's scheduler config (diffusers' schedule), the static shift 3 (FLUX's reference
# implementation), the reference implementation's for the model's family (FLUX: shift3; Qwen-Image: scheduler)
Schedule = Literal["scheduler", "shift3", "reference"]
# The names `schedule` took before (read as these; PNG metadata still records them, so older eligen reads it)
SCHEDULE_ALIASES = {"flux": "scheduler", "diffsynth": "reference"}
SHAPES = {  # what a wrongly sized list should have been
    "box": "[x1, y1, x2, y2]",
    "size": "[width, height]",
    "polygon": "at least 3 points [[x, y], [x, y], [x, y], ...]",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class LoraSpec(_Strict):
    """A LoRA to apply: a local file, a hub repo id (with `file`), or `repo-id/path/in/repo.safetensors`."""

    path: str = Field(min_length=1)
    file: str | None = None
    scale: float = 1.0


class ReferenceSpec(_Strict):
    """An entity's own reference image for the layout's IP-Adapter, acting on the entity's region only."""

    image: str = Field(min_length=1)
    scale: float = Field(default=1.0, ge=0.0)


class IPAdapterSpec(_Strict):
    """An IP-Adapter (InstantX or XLabs FLUX format, told from the file) with an optional global reference image."""

    path: str = Field(min_length=1)  # a local file or repo-id/path/in/repo
    image: str | None = Field(default=None, min_length=1)  # the global reference (everywhere but referenced entities)
    scale: float = Field(default=1.0, ge=0.0)
    image_encoder: str | None = Field(default=None, min_length=1)  # folder or hub id; default: the format's own


class Entity(_Strict):
    """One entity: a prompt and exactly one region."""

    prompt: str = Field(min_length=1)
    reference: ReferenceSpec | None = None  # its own IP-Adapter reference image (needs the layout's ip_adapter)
    loras: list[LoraSpec] | None = None  # LoRAs acting on this entity's tokens only (docs/entity-loras.md)
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
    transformer: str | None = Field(default=None, min_length=1)  # single-file transformer checkpoint replacing model's
    loras: list[LoraSpec] | None = None  # None: the model's own default (the EliGen LoRA for FLUX.1-dev)
    size: tuple[Side, Side] = (1024, 1024)
    seed: int | list[int] | None = None
    steps: PositiveInt = 50
    cfg: float = Field(default=3.0, ge=1.0)
    guidance: float = Field(default=3.5, ge=0.0)
    schedule: Schedule = "scheduler"
    units: Literal["px", "fraction", "permille"] = "px"
    prompt: str
    negative_prompt: str = ""
    max_sequence_length: PositiveInt | None = Field(default=None, le=1024)  # the family caps it (FLUX 512)
    entity_tokens: Literal["max", "auto"] | int = "max"  # text tokens kept per entity prompt
    attention: Literal["auto", "dense", "flex", "split"] = "auto"  # how the regional mask runs (attention_backends)
    regions_on_negative: bool = False
    cfg_rescale: bool = False  # scale guided velocities to the positive's norm per token (diffusers' Qwen-Image)
    color_mask: str | None = None
    ip_adapter: IPAdapterSpec | None = None
    entities: list[Entity] = []

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] % 16 or value[1] % 16:
            raise ValueError(f"expected [width, height], both multiples of 16, got {list(value)}")
        return value

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_alias(cls, value: Any) -> Any:
        return SCHEDULE_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("seed", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        seeds = value if isinstance(value, list) else [value]
        if value is not None and (not seeds or any(type(s) is not int or not 0 <= s < SEED_LIMIT for s in seeds)):
            raise ValueError(f"expected a seed (an integer from 0 to 2**64-1) or a non-empty list of seeds, "
                             f"got {value!r}")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a non-empty prompt")
        return value

    @field_validator("entity_tokens", mode="before")
    @classmethod
    def _token_budget(cls, value: Any) -> Any:
        if value in ("max", "auto") or (type(value) is int and 1 <= value <= 1024):
            return value  # the model's family caps a number further (FLUX: 512; `generate.entity_lengths`)
        raise ValueError(f"expected max, auto or a number of text tokens from 1 to 1024, got {value!r}")

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


def _field_name(loc: tuple[int | str, ...], kind: str) -> str:
    """Render a pydantic error location as `entities[2].box` (a missing tuple item names its tuple)."""
    if kind == "missing" and loc and isinstance(loc[-1], int):
        loc = loc[:-1]
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            name += f".{part}" if name else str(part)
    return name or "(top level)"


def _explain(error: dict[str, Any], schema: type[BaseModel]) -> tuple[str, str | None]:
    """Turn one pydantic error into an expectation and an optional hint."""
    kind, message = error["type"], error["msg"]
    shape = next((SHAPES[p] for p in reversed(error["loc"]) if p in SHAPES), None)
    if shape and kind in ("missing", "too_short", "too_long"):
        return f"expected {shape}", None
    if kind == "extra_forbidden":
        where = next((p for p in reversed(error["loc"]) if p in ("entities", "loras", "ip_adapter", "reference")), None)
        model = {"entities": Entity, "loras": LoraSpec, "ip_adapter": IPAdapterSpec, "reference": ReferenceSpec}.get(
            where, schema)
        return "unknown key", f"known keys here: {', '.join(model.model_fields)}"
    if kind == "missing":
        return "this key is required", None
    if kind == "literal_error":
        return f"expected {message.removeprefix('Input should be ')}, got {error['input']!r}", None
    if kind.startswith("value_error"):
        return message.removeprefix("Value error, "), None
    return f"{message[0].lower()}{message[1:]}, got {error['input']!r}", None


def _empty_value(data: Any, loc: tuple[int | str, ...]) -> str | None:
    """The field (`entities[0].color`) that YAML read as empty (None) where validation failed: the failing key
    itself, or the first empty key of the failing mapping. None when the failure is something else."""
    target, name = data, ""
    for part in loc:
        if isinstance(part, int) and isinstance(target, list) and 0 <= part < len(target):
            target, name = target[part], f"{name}[{part}]"
        elif isinstance(part, str) and isinstance(target, dict) and part in target:
            target, name = target[part], f"{name}.{part}" if name else part
        else:
            break
    if target is None and name:
        return name
    if isinstance(target, dict):
        empty = next((key for key, value in target.items() if value is None and key in Entity.model_fields), None)
        return f"{name}.{empty}" if empty and name else None
    return None


def parse_layout(data: Any, source: str = "<layout>", schema: type[Layout] = Layout) -> Layout:
    """Validate already-parsed YAML data (a mapping) as a version-1 layout (or as `schema`)."""
    if not isinstance(data, dict):
        raise LayoutError(source, "(top level)", f"expected a mapping of keys, got {type(data).__name__}")
    if "version" in data and data["version"] != 1:
        raise LayoutError(source, "version", f"expected 1, got {data['version']!r}",
                          "this eligen reads version-1 layouts")
    try:
        layout = schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        expected, hint = _explain(first, schema)
        field = _field_name(first["loc"], first["type"])
        empty = _empty_value(data, first["loc"])
        if empty is not None:  # most often `color: #dc1e1e`: YAML reads an unquoted `#` as a comment
            key = re.split(r"[.\]]", empty)[-1]
            example = '"#dc1e1e"' if key == "color" else '"#..."'
            field, expected = empty, "expected a value, the file gives none (YAML read it as empty)"
            hint = f"an unquoted # starts a comment in YAML; quote the value: {key}: {example}"
        others = len(exc.errors()) - 1
        if others:
            expected += f" (and {others} more problem{'s' if others > 1 else ''})"
        raise LayoutError(source, field, expected, hint) from None
    if any(e.color is not None for e in layout.entities) and layout.color_mask is None:
        index = next(i for i, e in enumerate(layout.entities) if e.color is not None)
        raise LayoutError(source, f"entities[{index}].color", "expected a top-level `color_mask` PNG, required "
                          "by `color` regions", "add `color_mask: regions.png` (relative to the layout file)")
    referenced = next((i for i, e in enumerate(layout.entities) if e.reference is not None), None)
    if referenced is not None and layout.ip_adapter is None:
        raise LayoutError(source, f"entities[{referenced}].reference", "expected a top-level `ip_adapter`, which an "
                          "entity's reference image needs", "add `ip_adapter: {path: ip-adapter.bin}` (or pass "
                          "--ip-adapter FILE)")
    return layout


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key: {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_layout_data(path: Path) -> dict[str, Any]:
    """Read a layout YAML file safely, with errors that name the file."""
    source = str(path)
    if path.is_dir():
        found = len(list(path.glob("*.yaml")))
        raise LayoutError(source, "(file)", "expected a layout file, this is a folder",
                          f"it holds {found} .yaml file{'s' * (found != 1)}: give them as {path / '*.yaml'}; "
                          "`eligen eval` takes folders of layouts as they are")
    if not path.is_file():
        raise LayoutError(source, "(file)", "expected an existing layout file, there is no file at this path")
    return layout_data_from_bytes(path.read_bytes(), source)


def layout_data_from_bytes(content: bytes, source: str) -> dict[str, Any]:
    """Parse layout YAML text (UTF-8 bytes) safely, with errors that name `source`."""
    try:
        data = load_yaml(content.decode("utf-8"), _UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError:
        raise LayoutError(source, "(file)", "expected a UTF-8 text YAML file") from None
    except NestingError as exc:
        raise LayoutError(source, "(yaml)", str(exc)) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise LayoutError(source, "(yaml)", f"expected valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise LayoutError(source, "(file)", "expected a layout, the file is empty")
    return data


def load_layout(
    path: str | Path, overrides: dict[str, Any] | None = None, image_size: tuple[int, int] | None = None
) -> Layout:
    """Load, merge command-line overrides into, and validate a layout file.

    With `image_size` the file is an edits file for inpainting an image of that size.
    """
    path = Path(path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    data = with_overrides(read_layout_data(path), overrides, str(path))
    try:
        return parse_edits(data, image_size, str(path)) if image_size else parse_layout(data, str(path))
    except LayoutError as exc:
        key = re.split(r"[.\[]", exc.field, maxsplit=1)[0]
        if key in overrides:
            raise LayoutError(f"{path} (--{key.replace('_', '-')} on the command line)", exc.field,
                              exc.expected, exc.hint) from None
        raise




def with_overrides(data: Any, overrides: dict[str, Any], source: str) -> Any:
    """Layout data with command-line values merged in: top-level keys replace the file's, and `entity_loras`
    ({entity index: [LoRA spec, ...]}, from `--entity-lora`) is added to those entities' own `loras`."""
    if not isinstance(data, dict):
        return data
    overrides = dict(overrides)
    extra: dict[int, list[dict[str, Any]]] = overrides.pop("entity_loras", None) or {}
    data = {**data, **overrides}
    if not extra:
        return data
    entities = data.get("entities")
    count = len(entities) if isinstance(entities, list) else 0
    where = f"{source} (--entity-lora on the command line)"
    entities = list(entities) if isinstance(entities, list) else []
    for index, specs in sorted(extra.items()):
        if not 0 <= index < count:
            raise LayoutError(where, f"entities[{index}]", f"expected the index of an entity (0 to {count - 1}), "
                              f"the layout has {count} entit{'y' if count == 1 else 'ies'}" if count else
                              "expected the index of an entity, the layout has none")
        entity = entities[index]
        if not isinstance(entity, dict):
            continue  # validation names the malformed entity
        entities[index] = {**entity, "loras": [*(entity.get("loras") or []), *specs]}
    return {**data, "entities": entities}


class Edits(Layout):
    """An edits file for inpainting: a layout whose entities are the regions to repaint.

    `size` comes from the source image (any size), so `px` coordinates refer to the source image.
    """

    fusion: Literal["exact", "paper"] = "exact"
    dilate: Annotated[int, Field(ge=0, le=256)] = 8
    feather: Annotated[int, Field(ge=0, le=256)] = 8

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, value: tuple[int, int]) -> tuple[int, int]:
        return value  # the source image's own size; the model grid is derived from it

    @model_validator(mode="after")
    def _has_entities(self) -> Edits:
        if not self.entities:
            raise ValueError("an edits file needs at least one entity: the regions to repaint")
        return self


def parse_edits(data: Any, image_size: tuple[int, int], source: str = "<edits>") -> Edits:
    """Validate edits data for a source image of `image_size` (width, height)."""
    if isinstance(data, dict) and "size" in data:
        raise LayoutError(source, "size", "expected no `size` in an edits file",
                          "the size comes from the image; `px` coordinates refer to the source image")
    if isinstance(data, dict):
        data = {**data, "size": list(image_size)}
    return parse_layout(data, source, Edits)

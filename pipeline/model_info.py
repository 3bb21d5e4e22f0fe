"""What can be known about a model without loading it (no torch): where it is and its defaults."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .families.defaults import FamilyDefaults, UnknownFamilyError, family_for_class, family_for_hub_id
from .layout import LayoutError, PositiveInt, Side
from .structured_text import load_json

EXTRA_CONFIG = "eligen.json"  # optional per-folder declarations (ModelDeclaration), e.g. {"size": [64, 64]}
BUILTIN_MODELS = Path(__file__).parent / "shapes" / "builtin-models"  # shipped with the package (docs/shapes.md)
BUILTIN_NAMES = ("shapes", "shapes-base")  # the shapes model with its EliGen weights, and its base alone


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and why."""


def resolve_model(model: str, base_dir: Path, source: str = "<layout>", field: str = "model") -> str:
    """A local folder (absolute path, resolved against `base_dir`), a built-in name or a hub id, unchanged.

    A value that exists as a folder relative to `base_dir` is local; then the built-in names
    (`shapes`, `shapes-base`, kept as names so outputs that record them run anywhere: `model_folder`
    finds them); one that looks like a path (starts with `.`, `/` or `~`) but does not exist is an
    error; a bare name (no `org/`) must be a cached hub model or one the hub knows (asked once, briefly), else it
    is an error that suggests the closest name; anything else is a hub id.
    """
    candidate = (base_dir / Path(model).expanduser()).resolve()
    if candidate.is_dir():
        return str(candidate)
    if model in BUILTIN_NAMES:
        return model
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise LayoutError(source, field, f"expected a model folder or a hub id, {candidate} does not exist")
    if "/" not in model:
        _check_bare_name(model, candidate, base_dir, source, field)
    return model


HUB_PROBE_SECONDS = 5.0  # one request, no retries: a name the hub does not know answers at once


def hub_unavailable(repo_id: str) -> str | None:
    """Why the hub model `repo_id` cannot be loaded now, or None when it can (it is in the local Hugging Face cache,
    or the hub, asked once with a short timeout, knows it)."""
    import os

    from huggingface_hub.constants import HF_HUB_CACHE

    if (Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir():
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=HUB_PROBE_SECONDS)
    except GatedRepoError:  # it exists; loading says how to get access
        return None
    except RepositoryNotFoundError:
        return "not a model on the Hugging Face Hub (or a private one: set HF_TOKEN)"
    except Exception as exc:  # no network, a timeout, a proxy: the hub cannot be asked now
        return f"not in the local Hugging Face cache, and the hub could not be reached ({type(exc).__name__})"
    return None


def _check_bare_name(model: str, candidate: Path, base_dir: Path, source: str, field: str) -> None:
    """A bare name (no `org/`) that is neither a folder nor a built-in model must be a hub model that can be
    loaded; else refuse it at once, suggesting the closest local folder or built-in name."""
    import difflib

    hub = hub_unavailable(model)
    if hub is None:
        return
    folders = sorted(p.name for p in base_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if base_dir.is_dir() else []
    close = difflib.get_close_matches(model, [*BUILTIN_NAMES, *folders], n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    hint += f"the built-in models are {', '.join(BUILTIN_NAMES)}; a hub id is org/name, e.g. " \
            "black-forest-labs/FLUX.1-dev"
    raise LayoutError(source, field, f"expected a model folder, a built-in model or a hub id; {model!r} is not a "
                      f"folder ({candidate} does not exist), not a built-in model and {hub}", hint)


def model_folder(model: str) -> str:
    """Where a model loads from: the shipped folder of a built-in name, anything else unchanged."""
    if model in BUILTIN_NAMES and not Path(model).is_dir():
        return str(BUILTIN_MODELS / model)
    return model


def is_hub_file(spec: str) -> bool:
    """Whether `spec` names a file in a hub repository: `repo-id/path/in/repo.safetensors`."""
    return len(spec.split("/")) >= 3 and spec.endswith(".safetensors") and not spec.startswith((".", "/", "~"))


def _local_json(model: str, relative: str) -> dict | None:
    path = Path(model_folder(model)) / relative
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=64)
def _hub_pipeline_class(model: str) -> str | None:
    """`_class_name` of a hub model's model_index.json, read through the Hugging Face cache (downloaded once); None
    when it cannot be read now (offline, no network, no such repository or file)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(model, "model_index.json")
        return json.loads(Path(path).read_text(encoding="utf-8")).get("_class_name")
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError):
        return None


def model_family(model: str) -> FamilyDefaults:
    """The family of a model, told by `_class_name` in its model_index.json: a local folder's (none: FLUX), a hub
    id's from the table of known ids, else its model_index.json read from the hub (when that cannot be read now:
    FLUX, and loading says why). A pipeline class of no family eligen knows is a `ModelLoadError`."""
    index = _local_json(model, "model_index.json")
    try:
        if index is not None:
            return family_for_class(index.get("_class_name"), model)
        known = family_for_hub_id(model)
        return known or family_for_class(_hub_pipeline_class(model), model)
    except UnknownFamilyError as exc:
        raise ModelLoadError(str(exc)) from None


class ModelDeclaration(BaseModel):
    """What a model folder declares about itself in its `eligen.json`; every key is optional.

    `size`, `steps` and `cfg` are the model's native defaults, used where a layout leaves them out
    (`model_defaults`); `vocabulary` (the words its text encoders were trained on) and `max_entities` (the most
    entities per image it was trained with) let a layout be checked against the model (`layout_warnings`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    note: str | None = None
    max_sequence_length: Annotated[int, Field(ge=1, le=1024)] | None = None  # FLUX at most 512
    size: tuple[Side, Side] | None = None
    steps: PositiveInt | None = None
    cfg: Annotated[float, Field(ge=1.0)] | None = None
    vocabulary: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    max_entities: PositiveInt | None = None

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and (value[0] % 16 or value[1] % 16):
            raise ValueError(f"expected [width, height], both multiples of 16, got {list(value)}")
        return value


def declaration(model: str) -> ModelDeclaration:
    """The model folder's `eligen.json`, validated; an empty declaration for hub ids and folders without one."""
    path = Path(model_folder(model)) / EXTRA_CONFIG
    if not path.is_file():
        return ModelDeclaration()
    try:
        data = load_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError and NestingError are ValueErrors
        raise ModelLoadError(f"{path}: (file): expected a JSON object ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: (top level): expected a JSON object, got {type(data).__name__}")
    try:
        return ModelDeclaration.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        expected = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        known = ", ".join(ModelDeclaration.model_fields)
        hint = f" (known keys: {known})" if first["type"] == "extra_forbidden" else f", got {first['input']!r}"
        raise ModelLoadError(f"{path}: {field}: {expected}{hint}") from None


def default_max_sequence_length(model: str) -> int:
    """The folder's declared text length per prompt group (eligen.json), else its family's (FLUX.1-dev: 512)."""
    return declaration(model).max_sequence_length or model_family(model).max_sequence_length


def scale_factor(model: str) -> int:
    """The VAE's spatial scale factor from a local folder's config, else its family's (8 for both families).

    FLUX's `AutoencoderKL` halves the size between its blocks (`block_out_channels`); Qwen-Image's
    `AutoencoderKLQwenImage` once per entry of `temperal_downsample`, as diffusers' QwenImagePipeline counts it.
    """
    vae = _local_json(model, "vae/config.json")
    if vae is None:
        return model_family(model).scale_factor
    if "temperal_downsample" in vae:
        return 2 ** len(vae["temperal_downsample"])
    return 2 ** (len(vae["block_out_channels"]) - 1)


def default_size(model: str) -> tuple[int, int]:
    """The canvas a model was made for: the folder's declared `size` (eligen.json), else its family's."""
    return declaration(model).size or model_family(model).size


def known_words(model: str) -> list[str] | None:
    """The whole vocabulary of a model with a tiny word-level one (the folder's declared `vocabulary`), else None
    (a real text encoder knows any word)."""
    return declaration(model).vocabulary

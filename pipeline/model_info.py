"""What can be known about a model without loading it (no torch): where it is and its defaults."""

from __future__ import annotations

import json
from pathlib import Path

from .layout import LayoutError

DEFAULT_MAX_SEQUENCE_LENGTH = 512  # T5 tokens per prompt group for FLUX.1-dev
DEFAULT_SCALE_FACTOR = 8  # FLUX.1-dev's VAE
DEFAULT_SIZE = (1024, 1024)  # FLUX.1-dev's canvas, the layout format's default `size`
EXTRA_CONFIG = "eligen.json"  # optional per-folder facts: {"max_sequence_length": 32, "size": [64, 64], "words": [...]}
BUILTIN_MODELS = Path(__file__).parent / "builtin-models"  # shipped with the package (docs/shapes.md)
BUILTIN_NAMES = ("shapes", "shapes-base")  # the shapes model with its EliGen weights, and its base alone


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and why."""


def resolve_model(model: str, base_dir: Path, source: str = "<layout>", field: str = "model") -> str:
    """A local folder (absolute path, resolved against `base_dir`), a built-in name or a hub id, unchanged.

    A value that exists as a folder relative to `base_dir` is local; then the built-in names
    (`shapes`, `shapes-base`, kept as names so outputs that record them run anywhere: `model_folder`
    finds them); one that looks like a path (starts with `.`, `/` or `~`) but does not exist is an
    error; anything else is a hub id.
    """
    candidate = (base_dir / Path(model).expanduser()).resolve()
    if candidate.is_dir():
        return str(candidate)
    if model in BUILTIN_NAMES:
        return model
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise LayoutError(source, field, f"expected a model folder or a hub id, {candidate} does not exist")
    return model


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


def default_max_sequence_length(model: str) -> int:
    """The folder's declared T5 length (eligen.json), else FLUX.1-dev's 512."""
    extra = _local_json(model, EXTRA_CONFIG) or {}
    return int(extra.get("max_sequence_length", DEFAULT_MAX_SEQUENCE_LENGTH))


def scale_factor(model: str) -> int:
    """The VAE's spatial scale factor from a local folder's config, else FLUX.1-dev's 8."""
    vae = _local_json(model, "vae/config.json")
    if vae is None:
        return DEFAULT_SCALE_FACTOR
    return 2 ** (len(vae["block_out_channels"]) - 1)


def default_size(model: str) -> tuple[int, int]:
    """The canvas a model was made for: the folder's declared `size` (eligen.json), else FLUX.1-dev's 1024x1024."""
    size = (_local_json(model, EXTRA_CONFIG) or {}).get("size")
    valid = isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
    return (size[0], size[1]) if valid else DEFAULT_SIZE


def known_words(model: str) -> list[str] | None:
    """The whole vocabulary of a model with a tiny word-level one (the folder's declared `words`, eligen.json), else
    None (a real text encoder knows any word)."""
    words = (_local_json(model, EXTRA_CONFIG) or {}).get("words")
    return [str(w) for w in words] if isinstance(words, list) else None

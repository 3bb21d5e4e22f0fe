"""Files from the Hugging Face Hub through its cache, with errors that say what to do.

Downloads respect `HF_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE` as every Hugging Face library does, and
show huggingface_hub's own progress bars.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from .layout import LayoutError, LoraSpec
from .model_info import ModelLoadError, is_hub_file

ELIGEN_LORA = LoraSpec(path="modelscope/EliGen", file="model_bf16.safetensors")  # DiffSynth-Studio/Eligen
# DiffSynth-Studio/Qwen-Image-EliGen-V2 (ModelScope), mirrored on the Hugging Face Hub under the same id
QWEN_IMAGE_ELIGEN_LORA = LoraSpec(path="DiffSynth-Studio/Qwen-Image-EliGen-V2", file="model.safetensors")
DEFAULT_LORAS = {"black-forest-labs/FLUX.1-dev": [ELIGEN_LORA],  # what `loras` means when a layout omits it
                 "Qwen/Qwen-Image": [QWEN_IMAGE_ELIGEN_LORA]}


def hub_error(exc: Exception, repo_id: str, what: str) -> ModelLoadError:
    """A Hugging Face Hub failure as a message a person can act on."""
    if isinstance(exc, GatedRepoError):
        return ModelLoadError(
            f"{repo_id} is a gated model: accept its licence at https://huggingface.co/{repo_id} while logged "
            f"in, then run `huggingface-cli login` (or set HF_TOKEN) on this machine"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelLoadError(f"{repo_id} was not found on the Hugging Face Hub (or it is private: set HF_TOKEN)")
    if isinstance(exc, LocalEntryNotFoundError):
        return ModelLoadError(
            f"{what} of {repo_id} is not in the local Hugging Face cache and cannot be downloaded now (offline: "
            f"HF_HUB_OFFLINE is set, or no network); download it once with network access"
        )
    if isinstance(exc, EntryNotFoundError):
        return ModelLoadError(f"{repo_id} has no file {what}")
    return ModelLoadError(f"could not fetch {what} of {repo_id}: {exc}")


def fetch(repo_id: str, filename: str) -> Path:
    """One file of a hub repository, from the cache or downloaded into it."""
    try:
        return Path(hf_hub_download(repo_id, filename))
    except (HfHubHTTPError, LocalEntryNotFoundError, EntryNotFoundError, OSError, ValueError) as exc:
        raise hub_error(exc, repo_id, filename) from exc


def local_or_hub_file(spec: str, base_dir: Path = Path(".")) -> Path | None:
    """A local file (relative to `base_dir`), or `repo-id/path/in/repo.safetensors` fetched through the hub cache;
    None when `spec` is neither."""
    local = (base_dir / Path(spec).expanduser()).resolve()
    if local.is_file():
        return local
    if is_hub_file(spec):
        parts = spec.split("/")
        return fetch("/".join(parts[:2]), "/".join(parts[2:]))
    return None


def lora_file(spec: LoraSpec, base_dir: Path, source: str, field: str) -> Path:
    """The local path of a LoRA: a local file, `repo-id` + `file`, or `repo-id/path/in/repo.safetensors`."""
    if spec.file is not None and len(spec.path.split("/")) == 2:
        return fetch(spec.path, spec.file)
    path = local_or_hub_file(spec.path, base_dir) if spec.file is None else None
    if path is None:
        raise LayoutError(
            source, field, f"expected a local .safetensors file or a hub LoRA, {spec.path!r} is neither",
            f"{(base_dir / spec.path).resolve()} does not exist; a hub LoRA is `repo-id/path/in/repo.safetensors` "
            f"or `path: repo-id` with `file:`",
        )
    return path

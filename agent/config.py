"""MLLM settings: command-line flags win over the environment, the environment over the config file.

The config file is `$XDG_CONFIG_HOME/eligen/config.yaml` (`~/.config/eligen/config.yaml` when
`XDG_CONFIG_HOME` is unset), read with `yaml.safe_load`; its keys are the flag names with underscores:

    mllm_url: http://localhost:8000/v1
    mllm_model: Qwen/Qwen2.5-VL-7B-Instruct
    mllm_family: qwen2.5-vl

The API key comes from `ELIGEN_MLLM_API_KEY`, else `OPENAI_API_KEY`, else `mllm_api_key` in the file.
It is kept out of every repr, message and log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eligen.pipeline.structured_text import NestingError, load_yaml

from .errors import AgentError

Family = Literal["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]
FAMILIES: tuple[Family, ...] = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
DEFAULT_MAX_PIXELS = 1_003_520  # the cap of a default-built transformers Qwen-VL image processor
# (`min_pixels`/`max_pixels` left unset: 1280 * 28 * 28)
ENV_PREFIX = "ELIGEN_MLLM_"


class MllmSettings(BaseModel):
    """Where the MLLM is and how to talk to it. Exactly one of `url` and `local` is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)
    family: Family = "qwen2.5-vl"
    api_key: str | None = Field(default=None, repr=False)
    local: str | None = Field(default=None, min_length=1)
    device: str | None = Field(default=None, min_length=1)
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    max_pixels: Annotated[int, Field(ge=3136, le=50_000_000)] = DEFAULT_MAX_PIXELS

    @property
    def endpoint(self) -> str:
        """A human-readable name of the backend in use."""
        return f"local model {self.local}" if self.local else f"{self.url}"


FIELDS = tuple(MllmSettings.model_fields)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/eligen/config.yaml`, else `~/.config/eligen/config.yaml`."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "eligen" / "config.yaml"


def _file_values(path: Path) -> dict[str, Any]:
    """The `mllm_*` keys of the config file (other keys belong to other parts of eligen)."""
    if not path.is_file():
        return {}
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, NestingError) as exc:
        raise AgentError(f"{path}: expected a YAML mapping ({exc.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AgentError(f"{path}: expected a YAML mapping of keys, got {type(data).__name__}")
    values = {key.removeprefix("mllm_"): value for key, value in data.items()
              if isinstance(key, str) and key.startswith("mllm_")}
    unknown = sorted(f"mllm_{key}" for key in values if key not in FIELDS)
    if unknown:
        known = ", ".join(f"mllm_{key}" for key in FIELDS)
        raise AgentError(f"{path}: unknown key {unknown[0]} (known keys: {known})")
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {key: environ[f"{ENV_PREFIX}{key.upper()}"] for key in FIELDS
              if environ.get(f"{ENV_PREFIX}{key.upper()}")}
    if "api_key" not in values and environ.get("OPENAI_API_KEY"):
        values["api_key"] = environ["OPENAI_API_KEY"]
    return values


def _where(name: str, layer: str, path: Path) -> str:
    return {"flags": f"--mllm-{name.replace('_', '-')}", "environment": f"{ENV_PREFIX}{name.upper()}",
            "file": f"mllm_{name} in {path}"}[layer]


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> MllmSettings:
    """Merge flags (None = not given), environment and config file into validated settings.

    Of `url` and `local`, the most specific layer that sets either one decides which backend is used.
    """
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    layers = {"flags": {k: v for k, v in flags.items() if v is not None}, "environment": _env_values(environ),
              "file": _file_values(path)}
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer, values in reversed(layers.items()):
        merged.update(values)
        origin.update(dict.fromkeys(values, layer))
    for layer, values in layers.items():
        if values.get("url") and values.get("local"):
            raise AgentError(f"both {_where('url', layer, path)} and {_where('local', layer, path)} are given; "
                             "choose one backend")
        if values.get("url") or values.get("local"):
            merged.pop("local" if values.get("url") else "url", None)
            break
    try:
        settings = MllmSettings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        shown = "(hidden)" if name == "api_key" else repr(first.get("input"))
        raise AgentError(f"{_where(name, origin.get(name, 'flags'), path)}: {first['msg'].lower()}, "
                         f"got {shown}") from None
    if not settings.url and not settings.local:
        raise AgentError("no MLLM is configured: pass --mllm-url URL (an OpenAI-compatible endpoint such as vLLM or "
                         f"DashScope) or --mllm-local MODEL, or set mllm_url in {path}")
    return settings

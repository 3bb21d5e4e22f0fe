"""What the families on diffusers pipelines share: reading a model's transformer config, and the components and
where they run, from the loaded pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..adapter_input import IPAdapterError
from ..hub import fetch
from ..model_info import ModelLoadError
from .base import AttentionQKV
from .defaults import FamilyDefaults


def transformer_config(model: str, kind: str) -> dict[str, Any]:
    """The transformer config of a local folder, or of a hub model (fetched first: clear errors for gated
    models, missing repos and an offline machine with an empty cache); `kind` names the family in errors."""
    if Path(model).is_dir():
        path = Path(model) / "transformer" / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{model} is not a diffusers {kind} folder: it has no transformer/config.json")
    else:
        fetch(model, "model_index.json")
        path = fetch(model, "transformer/config.json")
    return json.loads(path.read_text(encoding="utf-8"))


class DiffusersFamily:
    """A model family whose components sit in a diffusers pipeline (`pipe`)."""

    defaults: FamilyDefaults
    attention_qkv: AttentionQKV | None = None  # the family's joint q, k, v for attention maps; None: no maps

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def load_ip_adapter(self, path: Path, image_encoder: str | None, base_dir: Path = Path(".")) -> Any:
        """No IP-Adapters unless a family has them (`FamilyDefaults.ip_adapter_formats`)."""
        raise IPAdapterError(f"IP-Adapters are not supported for {self.defaults.name} models")

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def latent_channels(self) -> int:
        """Latent channels of the VAE: the transformer takes 2x2 patches of them."""
        return self.pipe.transformer.config.in_channels // 4

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return self.pipe.scheduler.config

"""The seam between the method and a model family: exactly what differs from one DiT family to another.

Everything else (layout, regions, the mask rule table and attention forms, the Euler/CFG loop, inpainting
fusion, outputs, training loop, evaluation, agent, CLI) is written once and works through this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .defaults import FamilyDefaults

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from ..conditioning import Conditioning
    from ..lora import LoraDelta

Velocity = Callable[[torch.Tensor, torch.Tensor, "Conditioning"], torch.Tensor]  # (tokens, timestep 0..1000, cond)
# (attention layer, image hidden states, text hidden states, rotary embedding) -> (q, k, v), each (B, N, H, D), of the
# joint [text | image] sequence as the layer computes them (attention maps read them)
AttentionQKV = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TokenLimit:
    """One text encoder's limit: `count(prompt)` tokens before truncation, of which it reads `limit`; `fields` the
    layout prompts it reads (`prompt`, `negative_prompt`, `entities` for every entity's; None: all)."""

    encoder: str
    count: Callable[[str], int]
    limit: int
    fields: tuple[str, ...] | None = None


class PromptEncoder(Protocol):
    """A family's text encoder for prompt groups, each distinct prompt encoded once."""

    max_sequence_length: int  # tokens of an entity prompt's group at most

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(sequence embeddings (1, L, D), pooled vector (1, D_pooled) or None) of a global or negative prompt."""
        ...

    def entity(self, prompt: str) -> torch.Tensor:
        """Sequence embeddings (1, L, D) of an entity prompt (a family may read it at another length than the
        global prompt: Qwen-Image)."""
        ...

    def token_count(self, prompt: str) -> int:
        """Tokens of an entity prompt the family keeps at most (its own tokens with the end token)."""
        ...

    def token_limits(self) -> list[TokenLimit]:
        """What the family's text encoders read of a prompt (truncation warnings)."""
        ...

    def text_ids(self, group_lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """The text position ids of `[group_1 | ... | group_n]` in the family's form (on `like`'s device)."""
        ...


class ModelFamily(Protocol):
    """A loaded model of one family: its components and the operations that differ between families."""

    defaults: FamilyDefaults
    pipe: Any  # the diffusers pipeline holding the components
    # Optional parts: None where the family has none (`attention_maps` then says so)
    attention_qkv: AttentionQKV | None

    @property
    def transformer(self) -> torch.nn.Module: ...

    @property
    def scale_factor(self) -> int: ...

    @property
    def latent_channels(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def scheduler_config(self) -> dict[str, Any]: ...

    def prompt_encoder(self, max_sequence_length: int) -> PromptEncoder:
        """An encoder of prompt groups at this length per group."""
        ...

    def text_ids(self, group_lengths: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """The family's text position ids for these prompt groups (see `PromptEncoder.text_ids`)."""
        ...

    def velocity(self, transformer: torch.nn.Module, latent_height: int, latent_width: int,
                 guidance: float | None) -> Velocity:
        """One transformer pass per call, for tokens of this latent grid (`transformer`: this model's, or the
        same module wrapped for training)."""
        ...

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB image -> packed, normalised latents (the VAE posterior mean)."""
        ...

    def decode(self, tokens: torch.Tensor, latent_height: int, latent_width: int) -> Image.Image:
        """Packed latents -> image."""
        ...

    def load_lora(self, path: str) -> list[LoraDelta]:
        """A LoRA file in any key style the family knows, as deltas on this transformer's modules."""
        ...

    def drop_text_encoders(self) -> None:
        """Free the text encoders (every prompt is encoded already)."""
        ...

    def load_ip_adapter(self, path: Path, image_encoder: str | None, base_dir: Path) -> Any:
        """An IP-Adapter file with its image encoder, installed in the transformer (`references.ImagePrompt`);
        only where `defaults.ip_adapter_formats` names formats (otherwise an `IPAdapterError`)."""
        ...

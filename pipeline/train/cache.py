"""`eligen train --cache`: text embeddings and VAE latents computed once and kept as safetensors files.

One file per distinct prompt (`text/<sha256>.safetensors`: the sequence embeddings and the pooled vector, FLUX's
T5 and CLIP, exactly as the family's prompt encoder returns them for a global prompt; for an entity prompt whose
encoding as an entity differs, that one too: a Qwen-Image prompt longer than the entity limit) and one per sample
(`latents/<index>-<W>x<H>.safetensors`: packed VAE latents at its bucket). A `manifest.json` records what the
cache was built for; a cache built for another model, length or resolution is refused rather than silently mixed.
Files are written atomically, so an interrupted build resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from ..dataset import Sample, load_image
from ..outputs import write_atomic

if TYPE_CHECKING:
    from ..generate import EligenPipeline

MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cache folder that belongs to another configuration."""


class TrainCache:
    """Read access to a cache folder (and where its files go)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def text_path(self, prompt: str) -> Path:
        return self.folder / "text" / f"{hashlib.sha256(prompt.encode()).hexdigest()[:40]}.safetensors"

    def latent_path(self, sample: Sample) -> Path:
        width, height = sample.bucket
        return self.folder / "latents" / f"{sample.index:07d}-{width}x{height}.safetensors"

    def text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(sequence embeddings (1, L, D), pooled vector (1, D_pooled) or None) of a prompt as a global prompt, with
        its sequence embeddings as an entity prompt where they differ (else None)."""
        tensors = load_file(self.text_path(prompt))
        return tensors["t5"], tensors.get("pooled"), tensors.get("entity")

    def latents(self, sample: Sample) -> torch.Tensor:
        """Packed VAE latents (1, n_tokens, 4C) of a sample's image at its bucket."""
        return load_file(self.latent_path(sample))["latents"]

    def claim(self, identity: dict[str, Any]) -> None:
        """Record what this cache is for, or refuse when it was built for something else."""
        path = self.folder / MANIFEST
        if path.is_file():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            if recorded != identity:
                keys = sorted(set(recorded) | set(identity))
                changed = ", ".join(k for k in keys if recorded.get(k) != identity.get(k))
                raise CacheError(f"the cache in {self.folder} was built for another {changed}; delete it or give "
                                 f"another --cache-dir")
            return
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8"))


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def build_cache(
    cache: TrainCache, pipe: EligenPipeline, samples: Sequence[Sample], max_sequence_length: int,
    rank: int = 0, world_size: int = 1, on_item: Callable[[int, int], None] | None = None,
) -> None:
    """Write the missing files this process is responsible for (every `world_size`-th prompt and sample)."""
    entities = {"", *(p for s in samples for p in s.entity_prompts)}  # "": the slots padding a batch's entities
    prompts = sorted({*entities, *(s.layout.prompt for s in samples)})
    work: list[tuple[str, Any]] = [("text", p) for p in prompts[rank::world_size]]
    work += [("latents", s) for s in samples[rank::world_size]]
    for done, (kind, item) in enumerate(work, start=1):
        if kind == "text" and not cache.text_path(item).is_file():
            encode = pipe.prompt_encoder(max_sequence_length)  # a fresh encoder: no memory growth
            embeds, pooled = encode(item)
            # "t5": the key every cache was written with (the embeddings of any family's text encoder)
            tensors = {"t5": embeds} if pooled is None else {"t5": embeds, "pooled": pooled}
            entity = encode.entity(item) if item in entities else embeds
            if entity.shape != embeds.shape or not torch.equal(entity, embeds):
                tensors["entity"] = entity
            _save(cache.text_path(item), tensors)
        elif kind == "latents" and not cache.latent_path(item).is_file():
            _save(cache.latent_path(item), {"latents": pipe.encode_image(load_image(item))})
        if on_item is not None:
            on_item(done, len(work))

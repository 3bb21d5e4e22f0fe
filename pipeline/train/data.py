"""What the training loop reads: samples as tensors, batches of one aspect-ratio bucket, per-sample seeds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..dataset import Sample, load_image
from .cache import TrainCache


def sample_seed(*parts: object) -> int:
    """A seed from the run seed and a sample's identity (epoch, index, purpose): the same on any process count,
    batch size or resume, so a run's randomness does not depend on how it was scheduled."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class TrainingSet(torch.utils.data.Dataset):
    """Samples as dicts: the image at its bucket (or its cached latents), prompts and token regions."""

    def __init__(self, samples: Sequence[Sample], cache: TrainCache | None = None) -> None:
        self.samples = list(samples)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, position: int) -> dict[str, Any]:
        sample = self.samples[position]
        item: dict[str, Any] = {
            "index": sample.index,
            "prompt": sample.layout.prompt,
            "entity_prompts": sample.entity_prompts,
            "regions": torch.from_numpy(sample.token_regions()),
            "bucket": sample.bucket,
        }
        if self.cache is None:
            item["image"] = load_image(sample)
        else:
            item["latents"] = self.cache.latents(sample)
            item["embeddings"] = {p: self.cache.text(p) for p in {sample.layout.prompt, "", *sample.entity_prompts}}
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A batch as lists (one entry per sample): images and region tables differ in shape between samples."""
    return {key: [item[key] for item in items] for key in items[0]}


class BucketBatchSampler:
    """Batches of `batch_size` positions from one bucket, in an order fixed by (seed, epoch).

    Each bucket is shuffled and cut into full batches (a remainder waits for the next epoch's shuffle), then the
    batches of all buckets are shuffled together. With accelerate's `split_batches`, `batch_size` is the global
    batch and each process takes its slice of every batch, so the samples of a step do not depend on the process
    count. Set `epoch` before iterating (there is no `set_epoch`: accelerate would call it with its own count).
    """

    drop_last = True

    def __init__(self, buckets: Sequence[tuple[int, int]], batch_size: int, seed: int) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        groups: dict[tuple[int, int], list[int]] = {}
        for position, bucket in enumerate(buckets):
            groups.setdefault(bucket, []).append(position)
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return sum(len(group) // self.batch_size for group in self.groups)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, "order"))
        batches = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1,
                                                                     self.batch_size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=generator).tolist())


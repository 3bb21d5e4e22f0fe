"""Running a benchmark: generate every (item, seed) image and score it, in shards, resumable.

Work is a list of (item, seed) pairs; shard `index` of `count` takes every count-th item from `index` with all
its seeds, so any number of processes split it without talking to each other. Each image is written atomically to
`images/s<seed>_<id>.png` (with its layout, seed, model and eligen version embedded by `render`) and each score
to `scores/s<seed>_<id>.json`; a pair whose file exists is skipped, so a killed run resumes where it stopped and
a score-only run needs only the images. A score file keeps one entry per scorer, so adding a scorer later
scores only what is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..outputs import save_png, write_atomic
from .items import BenchItem
from .scoring import Scorer

Render = Callable[[BenchItem, int], tuple[Image.Image, dict[str, Any]]]  # (item, seed) -> image, PNG metadata
Progress = Callable[[int, int], None]  # (done, total) in this shard


@dataclass(frozen=True)
class Shard:
    """This process's share of the work."""

    index: int = 0
    count: int = 1

    def pairs(self, items: Sequence[BenchItem], seeds: Sequence[int]) -> list[tuple[BenchItem, int]]:
        """Every count-th item from `index`, each with all its seeds in a row (its prompts are encoded once)."""
        return [(item, seed) for item in items[self.index::self.count] for seed in seeds]


@dataclass
class ShardStats:
    """What one process did in one stage."""

    stage: str
    process: int
    done: int  # images generated or scored now
    skipped: int  # already there from an earlier run
    seconds: float

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def image_path(out: Path, item: BenchItem, seed: int) -> Path:
    """`images/s<seed>_<id>.png`: the id last, after an underscore, as COCO-MIG's eval_mig.py reads names."""
    return out / "images" / f"s{seed}_{item.id}.png"


def score_path(out: Path, item: BenchItem, seed: int) -> Path:
    return out / "scores" / f"s{seed}_{item.id}.json"


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, atomically."""
    text = json.dumps(data, indent=1) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _timed(stage: str, shard: Shard, todo: list[tuple[BenchItem, int]], skipped: int, progress: Progress | None,
           work: Callable[[BenchItem, int], None]) -> ShardStats:
    start = time.perf_counter()
    for done, (item, seed) in enumerate(todo, 1):
        work(item, seed)
        if progress is not None:
            progress(done, len(todo))
    return ShardStats(stage, shard.index, len(todo), skipped, time.perf_counter() - start)


def generate_shard(items: Sequence[BenchItem], seeds: Sequence[int], out: Path, render: Render, shard: Shard,
                   progress: Progress | None = None) -> ShardStats:
    """Generate this shard's missing images."""
    pairs = shard.pairs(items, seeds)
    todo = [(item, seed) for item, seed in pairs if not image_path(out, item, seed).is_file()]

    def work(item: BenchItem, seed: int) -> None:
        image, metadata = render(item, seed)
        save_png(image, image_path(out, item, seed), metadata)

    return _timed("generate", shard, todo, len(pairs) - len(todo), progress, work)


def read_scores(path: Path) -> dict[str, Any]:
    """A score file's entries by scorer name ({} when there is none yet)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _missing(path: Path, scorers: Sequence[Scorer]) -> list[Scorer]:
    have = read_scores(path)
    return [s for s in scorers if s.name not in have]


def score_shard(items: Sequence[BenchItem], seeds: Sequence[int], out: Path, scorers: Sequence[Scorer], shard: Shard,
                progress: Progress | None = None) -> ShardStats:
    """Score this shard's images with every scorer that has not scored them yet."""
    pairs = shard.pairs(items, seeds)
    absent = [f"{image_path(out, i, s).name}" for i, s in pairs if not image_path(out, i, s).is_file()]
    if absent:
        raise FileNotFoundError(f"{out / 'images'}: expected {len(absent)} more generated images to score "
                                f"(first: {absent[0]}); generate them first (run without --score-only)")
    todo = [(item, seed) for item, seed in pairs if _missing(score_path(out, item, seed), scorers)]

    def work(item: BenchItem, seed: int) -> None:
        path = score_path(out, item, seed)
        entries = read_scores(path)
        with Image.open(image_path(out, item, seed)) as opened:
            image = opened.convert("RGB")
        for scorer in _missing(path, scorers):
            result = scorer.score(image, item)
            if len(result.instances) != len(item.instances):
                raise ValueError(f"scorer {scorer.name} returned {len(result.instances)} instance scores for "
                                 f"{len(item.instances)} instances of item {item.id}")
            entries[scorer.name] = asdict(result)
        write_json(path, entries)

    return _timed("score", shard, todo, len(pairs) - len(todo), progress, work)


def _merge(merged: dict[str, Any], row: dict[str, Any], scorer: str) -> None:
    clash = merged.keys() & row.keys()
    if clash:
        raise ValueError(f"scorer {scorer} reports {sorted(clash)}, which another scorer of this run reports too")
    merged.update(row)


def iter_scores(items: Sequence[BenchItem], seeds: Sequence[int], out: Path, scorers: Sequence[Scorer]
                ) -> Iterator[tuple[BenchItem, int, list[dict[str, Any]], dict[str, Any]]]:
    """Every (item, seed)'s merged scores: per instance one dict over all scorers, and the image's dict."""
    for item in items:
        for seed in seeds:
            entries = read_scores(score_path(out, item, seed))
            instances: list[dict[str, Any]] = [{} for _ in item.instances]
            image: dict[str, Any] = {}
            for scorer in scorers:
                entry = entries[scorer.name]
                for merged, row in zip(instances, entry["instances"], strict=True):
                    _merge(merged, row, scorer.name)
                _merge(image, entry["image"], scorer.name)
            yield item, seed, instances, image

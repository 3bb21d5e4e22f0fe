"""Which scorers `eligen eval` uses, built from its options (the scorers themselves are in
`eligen.pipeline.bench` and, for the MLLM judge, `eligen.agent.judge`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from eligen.pipeline.bench.items import BenchItem
    from eligen.pipeline.bench.scoring import Scorer

SCORER_NAMES = ("auto", "shapes", "coco-mig", "layoutsam", "clip", "pick", "judge")


@dataclass(frozen=True)
class ScorerOptions:
    """The scorers' models and where they run (None: each scorer's default)."""

    detector_model: str | None = None
    sam_model: str | None = None
    clip_model: str | None = None
    mllm_url: str | None = None
    mllm_model: str | None = None
    device: str | None = None
    mllm: Mapping[str, Any] = field(default_factory=dict)  # the other --mllm-* flags (family, local, timeout, ...)
    file_names: Mapping[str, str] = field(default_factory=dict)  # LayoutSAM-Eval: item id -> its image's file name
    pick_model: str | None = None


def auto_scorers(names: Sequence[str], items: Sequence[BenchItem], kind: str) -> list[str]:
    """`names` with `auto` replaced: the classical detector for shapes-world layouts, the benchmark's own scorer and
    CLIP for COCO-MIG, its VLM questions, CLIP and PickScore for LayoutSAM-Eval, else CLIP; each name once, in
    order."""
    from eligen.pipeline.bench.shapes_scorer import is_shapes_prompt

    unknown = [n for n in names if n not in SCORER_NAMES]
    if unknown:
        raise typer.BadParameter(f"expected one of {', '.join(SCORER_NAMES)}, got {unknown[0]!r}",
                                 param_hint="--scorer")
    shapes = all(is_shapes_prompt(i.prompt) for item in items for i in item.instances)
    own = {"coco-mig": ["coco-mig", "clip"], "layoutsam": ["layoutsam", "clip", "pick"]}
    auto = own.get(kind) or (["shapes"] if shapes else ["clip"])
    chosen: list[str] = []
    for name in names:
        for one in auto if name == "auto" else [name]:
            if one not in chosen:
                chosen.append(one)
    return chosen


def check_scorer_model(value: str | None, option: str) -> None:
    """A scorer's model, checked before any work: an existing folder, or a hub id (org/name) that is cached or
    that the hub knows; a file, a missing folder or a relative path is refused."""
    from eligen.pipeline.model_info import hub_unavailable

    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise typer.BadParameter(f"expected a model folder or a hub id, {value} is a file", param_hint=option)
    if value.startswith(("/", ".", "~")) or value.count("/") != 1 or "\\" in value:
        raise typer.BadParameter(f"expected a model folder or a hub id (org/name), {path.resolve()} does not exist",
                                 param_hint=option)
    unavailable = hub_unavailable(value)
    if unavailable:
        raise typer.BadParameter(f"expected a model folder or a hub id, {value} is {unavailable}; no folder "
                                 f"{path.resolve()} exists either", param_hint=option)


def build_scorers(names: Sequence[str], options: ScorerOptions) -> list[Scorer]:
    """The scorers by name (their models load when they first score; each is checked here, before any work)."""
    built: list[Scorer] = []
    for name in names:
        if name == "shapes":
            from eligen.pipeline.bench.shapes_scorer import ShapesScorer

            built.append(ShapesScorer())
        elif name == "coco-mig":
            from eligen.pipeline.bench.coco_mig_scorer import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, CocoMigScorer

            check_scorer_model(options.detector_model or DEFAULT_DETECTOR, "--detector-model")
            check_scorer_model(options.sam_model or DEFAULT_SEGMENTER, "--sam-model")
            built.append(CocoMigScorer(options.detector_model or DEFAULT_DETECTOR,
                                       options.sam_model or DEFAULT_SEGMENTER, _device(options)))
        elif name == "clip":
            from eligen.pipeline.bench.clip_scorer import DEFAULT_CLIP, ClipScorer

            check_scorer_model(options.clip_model or DEFAULT_CLIP, "--clip-model")
            built.append(ClipScorer(options.clip_model or DEFAULT_CLIP, _device(options)))
        elif name == "pick":
            from eligen.pipeline.bench.pick_scorer import DEFAULT_PICK, DEFAULT_PICK_PROCESSOR, PickScorer

            check_scorer_model(options.pick_model or DEFAULT_PICK, "--pick-model")
            if options.pick_model is None:
                check_scorer_model(DEFAULT_PICK_PROCESSOR, "--pick-model")
            built.append(PickScorer(options.pick_model or DEFAULT_PICK, options.pick_model or DEFAULT_PICK_PROCESSOR,
                                    _device(options)))
        elif name == "judge":
            from eligen.agent.judge import make_judge

            built.append(make_judge(_mllm_settings(options)))
        elif name == "layoutsam":
            from eligen.agent.layoutsam_judge import make_layoutsam_judge

            if not options.file_names:
                raise typer.BadParameter("the layoutsam scorer scores LayoutSAM-Eval only", param_hint="--scorer")
            built.append(make_layoutsam_judge(_mllm_settings(options), options.file_names))
    return built


def _mllm_settings(options: ScorerOptions) -> Any:
    from eligen.agent.config import load_settings

    return load_settings({"url": options.mllm_url, "model": options.mllm_model, **options.mllm})


def _device(options: ScorerOptions) -> str:
    from eligen.pipeline.devices import pick_device

    return str(pick_device(options.device))

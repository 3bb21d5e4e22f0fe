"""The one render path: a validated layout on a loaded model -> images, each with the metadata its PNG carries.

Every front end (`eligen generate`, `inpaint`, `transfer`, `eval`, the studio, the chat, training validation, and
anything added later) parses its input into a `Layout` (or `Edits`) and calls this module; none of them applies model
defaults, encodes prompts, samples or builds PNG metadata itself.

    from eligen.pipeline.render import render
    for result in render(pipe, layout, seeds=[0, 1], base_dir=Path("layouts")):
        save_png(result.image, Path(f"out-{result.seed}.png"), result.metadata)

`render` is `prepare_render` (once per layout: the model's defaults applied, LoRAs made active, regions and prompts
encoded, the source image encoded when inpainting) followed by `Render.image(seed)` per seed; call the two yourself
to report progress per image or to reuse one preparation over calls (eval does).

    Load -> prepare_render (defaults -> LoRAs -> regions -> prompts [-> source latents]) -> image(seed)
         -> sample -> decode [-> composite] -> Rendered(image, metadata)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import __version__
from .conditioning import Conditioning
from .inpaint import InpaintPlan, inpaint, place, prepare
from .layout import SCHEDULE_ALIASES, Layout, LoraSpec
from .model_defaults import with_model_defaults
from .references import with_absolute_paths
from .regions import check_canvas, entity_masks, inline_masks, token_masks
from .sampler import StepCallback
from .transfer import prepare_transfer, transfer
from .transfer_canvas import TransferCanvas

if TYPE_CHECKING:
    from .generate import EligenPipeline


OLDER_SCHEDULE_NAMES = {name: older for older, name in SCHEDULE_ALIASES.items()}


def as_recorded(layout: Layout) -> dict[str, Any]:
    """A layout (or edits) as PNG metadata records it: its JSON, the schedule under its older name where it has one
    (`scheduler` as `flux`, `reference` as `diffsynth`), so that eligen from before the new names reads it too."""
    data = layout.model_dump(mode="json", exclude_none=True)
    return {**data, "schedule": OLDER_SCHEDULE_NAMES.get(data["schedule"], data["schedule"])}


@dataclass(frozen=True)
class SourceImage:
    """The image that inpainting edits: upright RGB at its own size, with its file name and the SHA-256 of its file
    (both recorded in the output's metadata)."""

    image: Image.Image
    name: str
    sha256: str


@dataclass(frozen=True)
class TransferJob:
    """An entity transfer (paper C.2): the two-panel canvas (`transfer_canvas`) and the In-Context LoRA stacked on
    the layout's LoRAs."""

    canvas: TransferCanvas
    in_context: LoraSpec
    source: SourceImage  # the image holding the entity (its name and SHA-256 go into the metadata)


@dataclass(frozen=True)
class Rendered:
    """One image of a render and what its PNG carries (`outputs.save_png(r.image, path, r.metadata)`)."""

    seed: int
    image: Image.Image  # generate: the image; inpaint: at the source's size; transfer: the right (target) panel
    layout: Layout  # as sampled: the model's defaults applied (inpaint and transfer: at the model canvas)
    metadata: dict[str, Any]  # enough to render it again (`eligen generate IMAGE.png`, or the edits of an inpaint)
    panels: Image.Image | None = None  # transfer: both panels side by side


@dataclass
class Render:
    """A layout prepared on a loaded model, shared by all its seeds; `image(seed)` renders one."""

    pipe: EligenPipeline
    layout: Layout  # as given, with the model's defaults applied (inpaint: at the source's size; transfer: at the
    # target's)
    sampled: Layout  # what the sampler runs (inpaint and transfer: placed on the model canvas)
    base_dir: Path
    masks: list[np.ndarray]  # each entity's pixel mask (inpaint: at the source's size)
    regions: np.ndarray | None  # (k, n_tokens) token regions on the model's grid (None for a transfer)
    positive: Conditioning
    negative: Conditioning | None
    plan: InpaintPlan | None = None
    source_image: SourceImage | None = None
    transfer: TransferJob | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def _recorded(self) -> Layout:
        """The layout as run: masks inlined, reference paths absolute, the LoRAs made explicit (and for a generated
        image the text length per prompt group)."""
        layout = inline_masks(with_absolute_paths(self.layout, self.base_dir), self.masks)
        update: dict[str, Any] = {"loras": self.pipe.lora_specs(self.layout)}
        if self.source_image is None:
            update["max_sequence_length"] = self.pipe.max_sequence_length(self.layout)
        return layout.model_copy(update=update)

    def metadata(self, seed: int) -> dict[str, Any]:
        """What the PNG of this seed's image carries."""
        head = {"eligen_version": __version__, "model": self.layout.model, "seed": seed}
        if self.transfer is not None:
            job = self.transfer
            recorded = {**as_recorded(self.layout), "seed": seed,
                        "panel": list(job.canvas.panel), "in_context_lora": job.in_context.model_dump(mode="json")}
            return {**head, "source_image": job.source.name, "source_sha256": job.source.sha256, "transfer": recorded,
                    **self.extra_metadata}
        if self.source_image is not None:
            edits = as_recorded(self._recorded)
            return {**head, "source_image": self.source_image.name, "source_sha256": self.source_image.sha256,
                    "edits": {**edits, "seed": seed}, **self.extra_metadata}
        layout = as_recorded(self._recorded.model_copy(update={"seed": seed}))
        return {**head, "layout": layout, **self.extra_metadata}

    def image(self, seed: int, on_step: StepCallback | None = None, batch_cfg: bool = False) -> Rendered:
        """Render one seed (`on_step(done, total)` after every sampling step; `batch_cfg`: both CFG branches in one
        batched pass, the same result)."""
        if self.transfer is not None and self.plan is not None:
            right, both = transfer(self.pipe, self.transfer.canvas, self.plan, seed, on_step, batch_cfg)
            return Rendered(seed, right, self.sampled, self.metadata(seed), both)
        if self.plan is not None:
            image = inpaint(self.pipe, self.plan, seed, on_step, batch_cfg)
            return Rendered(seed, image, self.sampled, self.metadata(seed))
        tokens = self.pipe.sample(self.sampled, self.positive, self.negative, seed, on_step=on_step,
                                  batch_cfg=batch_cfg)
        return Rendered(seed, self.pipe.decode(tokens, self.sampled), self.sampled, self.metadata(seed))


def prepare_render(
    pipe: EligenPipeline, layout: Layout, *, base_dir: Path = Path("."), source: str = "<layout>",
    source_image: SourceImage | None = None, transfer: TransferJob | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Render:
    """Prepare a validated layout on `pipe` for any number of seeds.

    What the layout leaves out of size, steps, cfg and negative prompt comes from the loaded model (its
    `eligen.json`, else its family: `model_defaults`); its LoRAs (else the model's default ones) are made active;
    its regions are rasterised against `base_dir` and checked on the model's token grid; its prompts are encoded
    once. With `source_image`, `layout` is `Edits` whose entities are repainted on that image (inpainting); with
    `transfer`, `layout` is the transfer file at the target's size (what the metadata records; the canvas holds it
    at the two-panel size). `extra_metadata` is
    added to every image's metadata (eval records its benchmark item). Raises `LayoutError` (bad input),
    `LoraError` and `ModelLoadError`.
    """
    layout = with_model_defaults(layout, pipe.model)
    extra = extra_metadata or {}
    if transfer is not None:
        plan = prepare_transfer(pipe, transfer.canvas, transfer.in_context, base_dir, source)
        return Render(pipe, layout, plan.layout, base_dir, transfer.canvas.masks, None, plan.positive, plan.negative,
                      plan, transfer.source, transfer, extra)
    if source_image is not None:
        masks = entity_masks(layout, base_dir, source, same_size=True)
        canvas = place(layout, masks, source_image.image.size, pipe.scale_factor, source)
        plan = prepare(pipe, canvas, source_image.image, base_dir, source)
        return Render(pipe, layout, plan.layout, base_dir, masks, canvas.regions, plan.positive, plan.negative, plan,
                      source_image, None, extra)
    check_canvas(layout, pipe.scale_factor, source)
    masks = entity_masks(layout, base_dir, source)
    regions = token_masks(masks, pipe.scale_factor, layout, source)
    positive, negative = pipe.prepare(layout, base_dir, source, regions)
    return Render(pipe, layout, layout, base_dir, masks, regions, positive, negative, extra_metadata=extra)


def render(
    pipe: EligenPipeline, layouts: Layout | Sequence[Layout], seeds: Sequence[int] | None = None, *,
    base_dir: Path = Path("."), source: str = "<layout>", source_image: SourceImage | None = None,
    transfer: TransferJob | None = None, on_step: StepCallback | None = None, batch_cfg: bool = False,
) -> Iterator[Rendered]:
    """Each layout rendered for each seed (`seeds`, else the layout's own, else one random seed), in order, each
    layout prepared once (`prepare_render` says what that does and what the other arguments mean)."""
    for layout in [layouts] if isinstance(layouts, Layout) else layouts:
        prepared = prepare_render(pipe, layout, base_dir=base_dir, source=source, source_image=source_image,
                                  transfer=transfer)
        for seed in seeds or layout.seeds or [secrets.randbelow(2**32)]:
            yield prepared.image(seed, on_step, batch_cfg)

"""The studio's engine: one loaded model, a queue that runs one job at a time on it, and what the jobs made.

Jobs (generate, inpaint, attention maps) are validated when they are submitted, so a bad layout is refused at
once with the CLI's message; the worker thread runs them in order, reporting each step and stopping between
steps when cancelled. Results stay in memory (the studio writes no files): each is the PNG `eligen generate` or
`eligen inpaint` would write, with the YAML that reproduces it.
"""

from __future__ import annotations

import queue
import secrets
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from eligen.agent.layout_yaml import dump_layout
from eligen.pipeline.layout import Edits, Layout, LayoutError, parse_edits, parse_layout
from eligen.pipeline.layout_warnings import region_warnings
from eligen.pipeline.lora import LoraError
from eligen.pipeline.model_info import ModelLoadError
from eligen.pipeline.outputs import OutputError, png_bytes
from eligen.pipeline.regions import PATCH, check_canvas, entity_masks, token_masks

from .inputs import NO_FOLDER, SourceImage

if TYPE_CHECKING:
    from eligen.pipeline.generate import EligenPipeline
    from eligen.pipeline.inpaint import Canvas

USER_ERRORS = (LayoutError, LoraError, ModelLoadError, OutputError)  # a message, not a traceback
MAX_RESULTS = 200  # kept in memory, oldest dropped first
MAX_IMAGES = 32  # uploaded inpainting sources kept
MAX_SEEDS = 16  # images per request
MAX_JOBS = 500  # finished jobs remembered


class Cancelled(Exception):
    """Raised between sampling steps when a job is cancelled."""


@dataclass
class Result:
    """One finished image: the PNG bytes as the CLI writes them, and the YAML that renders it again."""

    id: str
    kind: str  # generate, inpaint or attention
    seed: int
    png: bytes
    yaml: str
    file_name: str
    layout: Layout | None = None  # for attention maps of a generated image
    data: dict[str, Any] | None = None  # the numbers behind an attention grid


@dataclass
class Job:
    """A queued piece of work and where it stands."""

    id: str
    number: int  # order of submission
    kind: str
    run: Callable[[Job], None]
    total_steps: int
    seeds: list[int]
    state: str = "queued"  # queued, running, done, failed, cancelled
    step: int = 0
    image_index: int = 0
    results: list[str] = field(default_factory=list)
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def on_step(self, done: int, _total: int) -> None:
        self.step = done
        if self.cancel.is_set():
            raise Cancelled


@dataclass(frozen=True)
class Check:
    """A layout checked as the CLI checks it: its token cells on the model's grid and the warnings."""

    grid: tuple[int, int]  # tokens across, down
    cells: list[list[int]]  # per entity, the indices of its tokens (row-major)
    warnings: list[dict[str, str]]


def _seeds(layout: Layout) -> list[int]:
    seeds = layout.seeds or [secrets.randbelow(2**32)]
    if len(seeds) > MAX_SEEDS:
        raise LayoutError("layout", "seed", f"expected at most {MAX_SEEDS} seeds per request, got {len(seeds)}")
    return seeds


class Engine:
    """The loaded model and the queue of jobs on it."""

    def __init__(self, pipe: EligenPipeline, model: str, transformer: str | None = None) -> None:
        from eligen.pipeline.attention_maps import unsupported_reason

        self.pipe, self.model, self.transformer = pipe, model, transformer
        self.no_attention_maps = unsupported_reason(pipe)  # why this model has none, or None
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.submitted = 0
        self.results: OrderedDict[str, Result] = OrderedDict()
        self.images: OrderedDict[str, SourceImage] = OrderedDict()
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="eligen-studio-worker", daemon=True)
        self.worker.start()

    @property
    def scale_factor(self) -> int:
        return self.pipe.scale_factor

    @property
    def device(self) -> str:
        """Where the model runs (for the memory a request may use)."""
        return str(self.pipe.family.device)

    # checks (no model needed beyond its scale factor)

    def check_layout(self, layout: Layout, source: str = "layout") -> tuple[list[np.ndarray], Check]:
        """Rasterise and validate as `eligen preview` does; the masks and what the canvas shows."""
        check_canvas(layout, self.scale_factor, source)
        masks = entity_masks(layout, NO_FOLDER, source)
        tokens = token_masks(masks, self.scale_factor, layout, source)
        return masks, self._check(layout, masks, tokens)

    def check_edits(self, edits: Edits, image: SourceImage, source: str = "edits"
                    ) -> tuple[list[np.ndarray], Canvas, Check]:
        """Rasterise and place edits on the model canvas as `eligen inpaint` does."""
        from eligen.pipeline.inpaint import place

        masks = entity_masks(edits, NO_FOLDER, source, same_size=True)
        canvas = place(edits, masks, image.image.size, self.scale_factor, source)
        return masks, canvas, self._check(canvas.layout, canvas.grid_masks, canvas.regions)

    def _check(self, layout: Layout, masks: list[np.ndarray], tokens: np.ndarray) -> Check:
        step = self.scale_factor * PATCH
        grid = (layout.width // step, layout.height // step)
        cells = [np.flatnonzero(t).tolist() for t in tokens]
        warnings = [{"field": w.field, "message": w.message}
                    for w in region_warnings(layout, masks, tokens, self.scale_factor)]
        return Check(grid, cells, warnings)

    # jobs

    def _add(self, kind: str, run: Callable[[Job], None], total_steps: int, seeds: list[int]) -> Job:
        with self.lock:
            self.submitted += 1
            job = Job(secrets.token_hex(8), self.submitted, kind, run, total_steps, seeds)
            self.jobs[job.id] = job
            finished = [j.id for j in self.jobs.values() if j.state in ("done", "failed", "cancelled")]
            for old in finished[:max(0, len(self.jobs) - MAX_JOBS)]:
                del self.jobs[old]
        self.queue.put(job)
        return job

    def _keep(self, result: Result) -> None:
        with self.lock:
            self.results[result.id] = result
            while len(self.results) > MAX_RESULTS:
                self.results.popitem(last=False)

    def submit_generate(self, layout: Layout) -> Job:
        from eligen.pipeline.render import prepare_render

        self.check_layout(layout)
        seeds = _seeds(layout)

        def run(job: Job) -> None:
            prepared = prepare_render(self.pipe, layout, base_dir=NO_FOLDER, source="layout")
            for index, seed in enumerate(seeds):
                job.image_index, job.step = index, 0
                rendered = prepared.image(seed, job.on_step)
                again = parse_layout(rendered.metadata["layout"], "result")
                result = Result(secrets.token_hex(8), "generate", seed, png_bytes(rendered.image, rendered.metadata),
                                dump_layout(again), f"studio-{seed}", layout.model_copy(update={"seed": seed}))
                self._keep(result)
                job.results.append(result.id)

        return self._add("generate", run, layout.steps, seeds)

    def add_image(self, image: SourceImage) -> str:
        image_id = secrets.token_hex(8)
        with self.lock:
            self.images[image_id] = image
            while len(self.images) > MAX_IMAGES:
                self.images.popitem(last=False)
        return image_id

    def image(self, image_id: Any) -> SourceImage:
        with self.lock:
            image = self.images.get(image_id) if isinstance(image_id, str) else None
        if image is None:
            raise LayoutError("edits", "(image)", "expected an image loaded in inpaint mode; load the image again")
        return image

    def submit_inpaint(self, edits: Edits, image: SourceImage) -> Job:
        from eligen.pipeline import render

        self.check_edits(edits, image)
        seeds = _seeds(edits)

        def run(job: Job) -> None:
            picture = render.SourceImage(image.image, image.name, image.sha256)
            prepared = render.prepare_render(self.pipe, edits, base_dir=NO_FOLDER, source="edits",
                                             source_image=picture)
            for index, seed in enumerate(seeds):
                job.image_index, job.step = index, 0
                rendered = prepared.image(seed, job.on_step)
                again = parse_edits({k: v for k, v in rendered.metadata["edits"].items() if k != "size"},
                                    image.image.size, "result")
                stem = image.name.rsplit(".", 1)[0]
                result = Result(secrets.token_hex(8), "inpaint", seed, png_bytes(rendered.image, rendered.metadata),
                                dump_layout(again), f"{stem}-edited-{seed}")
                self._keep(result)
                job.results.append(result.id)

        return self._add("inpaint", run, edits.steps, seeds)

    def submit_attention(self, result: Result, steps: list[int] | None, block_spec: str) -> Job:
        """Attention maps of a generated image: one extra sampling pass of its layout and seed."""
        from PIL import Image

        from eligen.pipeline.attention_maps import Block, attention_maps, default_steps, draw_attention_grid

        layout = result.layout
        if self.no_attention_maps is not None:
            raise LayoutError("attention maps", "(model)", self.no_attention_maps)
        if layout is None or not layout.entities:
            raise LayoutError("attention maps", "(image)", "expected a generated image of a layout with entities")
        try:
            block = Block.parse(block_spec)
        except ValueError as exc:
            raise LayoutError("attention maps", "block", str(exc)) from None
        chosen = steps or default_steps(layout.steps)
        if any(not 1 <= s <= layout.steps for s in chosen):
            raise LayoutError("attention maps", "steps", f"expected steps from 1 to {layout.steps}, got {chosen}")

        def run(job: Job) -> None:
            import io

            positive, negative = self.pipe.prepare(layout, NO_FOLDER, "layout")
            try:
                maps = attention_maps(self.pipe, layout, positive, negative, result.seed, chosen, block, job.on_step)
            except ValueError as exc:
                raise LayoutError("attention maps", "block", str(exc)) from None
            image = Image.open(io.BytesIO(result.png))
            grid = draw_attention_grid(image, layout, maps)
            data = {"block": str(maps.block), "steps": maps.steps, "maps": maps.maps.tolist()}
            attention = Result(secrets.token_hex(8), "attention", result.seed, png_bytes(grid), "",
                               f"{result.file_name}.attention", data=data)
            self._keep(attention)
            job.results.append(attention.id)

        return self._add("attention", run, layout.steps, [result.seed])

    def cancel(self, job_id: str) -> Job | None:
        job = self.job(job_id)
        if job is not None:
            job.cancel.set()
        return job

    def job(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def result(self, result_id: str) -> Result | None:
        with self.lock:
            return self.results.get(result_id)

    def position(self, job: Job) -> int:
        """How many jobs run or wait before this one."""
        with self.lock:
            return sum(1 for j in self.jobs.values() if j.number < job.number and j.state in ("queued", "running"))

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job.cancel.is_set():
                job.state = "cancelled"
                continue
            job.state = "running"
            try:
                job.run(job)
                job.state = "done"
            except Cancelled:
                job.state = "cancelled"
            except USER_ERRORS as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # a bug or a model failure: keep serving, say what happened
                traceback.print_exc(file=sys.stderr)
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"

"""The studio's JSON API over the engine: what each request does, independent of the HTTP layer (server.py).

Every handler takes the request's parsed JSON object and returns the answer's; a refusal is an ApiError (its status
and JSON body) or the CLI's LayoutError, which the server sends as a 400 naming the field.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from eligen.agent.layout_yaml import dump_layout
from eligen.pipeline.inpaint_canvas import model_size
from eligen.pipeline.layout import Edits, Layout, LayoutError
from eligen.pipeline.regions import PATCH

from . import inputs, limits
from .engine import Engine, Job, Result
from .paths import Allowed

MAX_CHAT_CHARS = 4000


class ApiError(Exception):
    """A request the studio refuses, with the status and the JSON body to send (`close`: end the connection)."""

    def __init__(self, status: HTTPStatus, error: str, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.body, self.close = status, {"error": error, "message": message}, close


def plain(text: str | None) -> str | None:
    """`text` with any Python object repr (`<_io.BytesIO object at 0x...>`, from a library's message) replaced."""
    return None if text is None else inputs.OBJECT_REPR.sub("the data", text)


def layout_error_body(exc: LayoutError) -> dict[str, Any]:
    return {"error": "layout", "message": plain(str(exc)), "source": exc.source, "field": exc.field,
            "expected": plain(exc.expected), "hint": exc.hint}


def job_json(engine: Engine, job: Job) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "state": job.state, "step": job.step, "steps": job.total_steps,
            "image": job.image_index, "images": len(job.seeds), "seeds": job.seeds, "error": plain(job.error),
            "waiting": engine.position(job) if job.state == "queued" else 0,
            "results": [_result_json(result) for r in list(job.results) if (result := engine.result(r)) is not None]}


def _result_json(result: Result) -> dict[str, Any]:
    return {"id": result.id, "kind": result.kind, "seed": result.seed, "file": result.file_name,
            "attention": result.kind == "generate" and result.layout is not None and bool(result.layout.entities)}


@dataclass
class Studio:
    """What the server serves: the engine, the page's settings and the optional chat."""

    engine: Engine
    info: dict[str, Any]  # sent to the page once: model, defaults, LoRAs, vocabulary, initial layout
    allowed: Allowed  # the files a layout may name
    chat: Any = None  # a StudioChat when an MLLM was given
    client_jobs: dict[str, list[Job]] = field(default_factory=dict)  # per client address, its jobs not yet pruned
    jobs_lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate the page's layout or edits as it is being drawn: token cells and warnings, or the CLI's error. A
        prompt not written yet is no error here (its field is listed as `incomplete`); Generate refuses it."""
        data, incomplete = inputs.with_draft_prompts(body.get("layout"))
        layout, image = self._layout({**body, "layout": data})
        if isinstance(layout, Edits):
            assert image is not None
            _, _, check = self.engine.check_edits(layout, image)
        else:
            _, check = self.engine.check_layout(layout)
        return {"grid": check.grid, "cells": check.cells, "warnings": check.warnings, "incomplete": incomplete}

    def _layout(self, body: dict[str, Any]) -> tuple[Layout, inputs.SourceImage | None]:
        """The page's layout (or edits, with their source image), validated and within the studio's limits."""
        model, transformer = self.engine.model, self.engine.transformer
        if body.get("mode") == "inpaint":
            image = self.engine.image(body.get("image"))
            edits = inputs.browser_edits(body.get("layout"), image.image.size, model, self.allowed,
                                         transformer=transformer)
            canvas = model_size(image.image.size, self.engine.scale_factor * PATCH)
            limits.check_work(edits, model, canvas, "edits", "(image)", self.engine.device)
            return edits, image
        layout = inputs.browser_layout(body.get("layout"), model, self.allowed, transformer=transformer)
        limits.check_work(layout, model, layout.size, "layout", device=self.engine.device)
        return layout, None

    def submit(self, body: dict[str, Any], client: str) -> dict[str, Any]:
        layout, image = self._layout(body)
        if isinstance(layout, Edits):
            assert image is not None
            return self._queue(client, lambda: self.engine.submit_inpaint(layout, image))
        return self._queue(client, lambda: self.engine.submit_generate(layout))

    def _queue(self, client: str, submit: Callable[[], Job]) -> dict[str, Any]:
        """Submit a job for `client` unless it, or everyone together, already has as many waiting as allowed."""
        with self.jobs_lock:
            active = {key: [j for j in jobs if j.state in ("queued", "running")]
                      for key, jobs in self.client_jobs.items()}
            self.client_jobs = {key: jobs for key, jobs in active.items() if jobs}
            mine = self.client_jobs.get(client, [])
            if len(mine) >= limits.MAX_ACTIVE_JOBS:
                raise ApiError(HTTPStatus.TOO_MANY_REQUESTS, "queue", f"expected at most {limits.MAX_ACTIVE_JOBS} "
                               "jobs queued or running per client; wait for one to finish, or cancel one")
            if sum(map(len, self.client_jobs.values())) >= limits.MAX_QUEUE:
                raise ApiError(HTTPStatus.TOO_MANY_REQUESTS, "queue", f"expected at most {limits.MAX_QUEUE} jobs "
                               "queued or running in the studio; try again when some have finished")
            job = submit()
            self.client_jobs[client] = [*mine, job]
        return job_json(self.engine, job)

    def attention(self, body: dict[str, Any], client: str) -> dict[str, Any]:
        result = self.engine.result(str(body.get("result")))
        if result is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "missing", "that image is no longer kept")
        steps = body.get("steps")
        if steps is not None and not (isinstance(steps, list) and all(type(s) is int for s in steps)
                                      and 0 < len(steps) <= limits.MAX_ATTENTION_STEPS):
            raise LayoutError("attention maps", "steps", f"expected a list of 1 to {limits.MAX_ATTENTION_STEPS} step "
                              "numbers")
        block = body.get("block") or "dual:-1"
        if not isinstance(block, str):
            raise LayoutError("attention maps", "block", "expected a block such as dual:-1 or single:0")
        return self._queue(client, lambda: self.engine.submit_attention(result, steps, block))

    def upload_image(self, body: dict[str, Any]) -> dict[str, Any]:
        upload = inputs.uploads(body.get("files"))[0]
        image = inputs.source_image(upload)
        image_id = self.engine.add_image(image)
        return {"image": image_id, "name": image.name, "size": list(image.image.size)}

    def restore(self, body: dict[str, Any]) -> dict[str, Any]:
        files = inputs.uploads(body.get("files"))
        size = self.engine.image(body.get("image")).image.size if body.get("mode") == "inpaint" else None
        restored = inputs.restore(files, self.engine.model, self.allowed, size, self.engine.transformer)
        return {"kind": restored.kind, "layout": restored.data, "notes": restored.notes}

    def colours(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"regions": inputs.colour_regions(inputs.uploads(body.get("files"))[0])}

    def chat_message(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.chat is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "chat", "start the studio with --mllm-url to chat")
        message = body.get("message")
        if not isinstance(message, str) or not message.strip():
            raise ApiError(HTTPStatus.BAD_REQUEST, "chat", "say what to draw or change")
        image = self.engine.image(body.get("image")) if body.get("mode") == "inpaint" else None
        current = body.get("layout") if body.get("mode") != "inpaint" else None
        layout = None
        if isinstance(current, dict) and current.get("entities"):
            layout = inputs.browser_layout(current, self.engine.model, self.allowed)
        size = inputs.browser_layout({"size": body.get("size"), "prompt": "-"}, self.engine.model, Allowed()).size
        return self.chat.reply(message.strip()[:MAX_CHAT_CHARS], layout, image, size)

    def yaml(self, body: dict[str, Any]) -> dict[str, Any]:
        """The page's layout (or edits) as the YAML file `eligen generate` (or `eligen inpaint`) reads."""
        layout, image = self._layout(body)
        if isinstance(layout, Edits):
            assert image is not None
            self.engine.check_edits(layout, image)
        else:
            self.engine.check_layout(layout)
        return {"yaml": dump_layout(layout)}

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.engine.cancel(job_id)
        if job is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "missing", "no such job")
        return job_json(self.engine, job)

    def job(self, job_id: str) -> Job:
        job = self.engine.job(job_id)
        if job is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "missing", "no such job")
        return job

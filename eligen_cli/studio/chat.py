"""The studio's chat panel: the same agent functions as `eligen chat` (design, refine, plan edits of an image),
answering with a layout the page puts on the canvas. Everything the MLLM says is validated as a file would be."""

from __future__ import annotations

import threading
from typing import Any

from eligen.agent.backends import ChatBackend
from eligen.agent.config import Family
from eligen.agent.plan import design_layout, plan_edits
from eligen.pipeline.layout import Layout

from .inputs import SERVER_KEYS, SourceImage


class StudioChat:
    """One MLLM backend shared by every tab, asked one request at a time."""

    def __init__(self, backend: ChatBackend, family: Family, model: str) -> None:
        self.backend, self.family, self.model = backend, family, model
        self.lock = threading.Lock()

    def reply(self, request: str, current: Layout | None, image: SourceImage | None, size: tuple[int, int]
              ) -> dict[str, Any]:
        """Edits of `image` for the request (inpaint mode), else a new layout of `size` or `current` changed."""
        with self.lock:
            if image is not None:
                plan = plan_edits(self.backend, self.family, request, image.image)
                kind = "edits"
            else:
                plan = design_layout(self.backend, self.family, request, size, current, {"model": self.model})
                kind = "layout"
        data = plan.layout.model_dump(mode="json", exclude_none=True)
        for key in SERVER_KEYS:
            data.pop(key, None)
        if kind == "edits":
            data.pop("size", None)
        entities = ", ".join(e.prompt for e in plan.layout.entities) or "no entities"
        return {"kind": kind, "layout": data, "notes": plan.notes,
                "reply": f"{plan.layout.prompt} ({len(plan.layout.entities)}: {entities})"}

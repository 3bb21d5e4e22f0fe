"""How much work one request may ask of the studio's one model, so that no tab can block the queue for the others:
steps, seeds, entities and canvas size per request (a 400 naming the field), and jobs waiting per client (429). A
canvas must also fit in the memory free beside the loaded model (the pipeline's memory estimate)."""

from __future__ import annotations

from eligen.pipeline.layout import Layout, LayoutError
from eligen.pipeline.memory_estimate import check_memory
from eligen.pipeline.model_info import default_size

from .engine import MAX_SEEDS

MAX_STEPS = 200  # sampling steps of one image (FLUX.1-dev's default is 50, the shapes model's 24)
MAX_ENTITIES = 32
MAX_ATTENTION_STEPS = 16  # steps recorded by one attention-maps request
MAX_ACTIVE_JOBS = 4  # per client address: queued or running
MAX_QUEUE = 32  # jobs queued or running for all clients together
SIZE_FACTOR = 4  # a canvas may have this many times the pixels of the size the model declares


def max_pixels(model: str) -> int:
    """The largest canvas (width x height) the studio renders on `model`: SIZE_FACTOR times the pixels of the size the
    model declares (1024x1024 for FLUX.1-dev, 128x128 for the shapes model), however much memory is free."""
    width, height = default_size(model)
    return SIZE_FACTOR * width * height


def check_work(layout: Layout, model: str, canvas: tuple[int, int], source: str, size_field: str = "size",
               device: str | None = None) -> None:
    """Refuse a layout asking for more work than one request may: a LayoutError naming the field. `canvas` is the
    model canvas it renders on (the layout's size, or for inpainting the size the source image maps to); `device`
    is where the studio's model runs."""
    if layout.steps > MAX_STEPS:
        raise LayoutError(source, "steps", f"expected at most {MAX_STEPS} steps in the studio, got {layout.steps}")
    if len(layout.seeds) > MAX_SEEDS:
        raise LayoutError(source, "seed", f"expected at most {MAX_SEEDS} seeds per request, got {len(layout.seeds)}")
    if len(layout.entities) > MAX_ENTITIES:
        raise LayoutError(source, "entities", f"expected at most {MAX_ENTITIES} entities, got {len(layout.entities)}")
    limit = max_pixels(model)
    if canvas[0] * canvas[1] > limit:
        native = "x".join(map(str, default_size(model)))
        raise LayoutError(source, size_field, f"expected a canvas of at most {limit} pixels on {model} ({SIZE_FACTOR} "
                          f"times its {native}), got {canvas[0]}x{canvas[1]} = {canvas[0] * canvas[1]}",
                          "a smaller size" if size_field == "size" else "a smaller image")
    check_memory(layout.model_copy(update={"size": canvas}), device, source, loaded=True, field=size_field)

"""Entity transfer (paper C.2): EliGen inpainting of the right panel of a two-panel canvas (`transfer_canvas`), with
In-Context LoRA stacked on the layout's LoRAs (the EliGen LoRA by default), as the reference's entity_transfer
example: the source entity on the left panel is carried into the regions on the right one.

With `fusion: exact` the left panel is kept out of the repainted area (its latents follow the source exactly and its
pixels are composited back), so the source panel comes out unchanged even where a region's blend margin would reach
across the seam; with `fusion: paper` the whole canvas is sampled as the reference samples it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .inpaint import Fusion, InpaintPlan, exact_union, inpaint, packed_union, prepare
from .inpaint_canvas import place
from .layout import LoraSpec
from .sampler import StepCallback
from .transfer_canvas import TransferCanvas

if TYPE_CHECKING:
    from .generate import EligenPipeline


def transfer_loras(pipe: EligenPipeline, canvas: TransferCanvas, in_context: LoraSpec) -> list[LoraSpec]:
    """The layout's LoRAs (else the model's default ones) with In-Context LoRA after them."""
    return [*pipe.lora_specs(canvas.edits), in_context]


def prepare_transfer(pipe: EligenPipeline, canvas: TransferCanvas, in_context: LoraSpec, base_dir: Path = Path("."),
                     source: str = "<transfer>") -> InpaintPlan:
    """The inpainting plan of the two-panel canvas with both LoRAs applied; in exact mode the left panel pinned."""
    edits = canvas.edits.model_copy(update={"loras": transfer_loras(pipe, canvas, in_context)})
    placed = place(edits, canvas.masks, canvas.two_panel.size, pipe.scale_factor, source)
    plan = prepare(pipe, placed, canvas.two_panel, base_dir, source)
    if not plan.exact:
        return plan
    assert plan.alpha is not None
    alpha = plan.alpha.copy()
    alpha[:, : canvas.panel[0]] = 0.0  # the source panel: never blended, its latents follow the source
    latent_union = exact_union(alpha, plan.layout.size, pipe.scale_factor)
    union = packed_union(latent_union, plan.fusion.z_init.shape[-1] // 4, plan.fusion.z_init.device)
    return replace(plan, alpha=alpha, fusion=Fusion(plan.fusion.z_init, union))


def transfer(pipe: EligenPipeline, canvas: TransferCanvas, plan: InpaintPlan, seed: int,
             on_step: StepCallback | None = None, batch_cfg: bool = False) -> tuple[Image.Image, Image.Image]:
    """(the right panel, the whole two-panel image) for one seed."""
    both = inpaint(pipe, plan, seed, on_step, batch_cfg)
    width, height = canvas.panel
    return both.crop((width, 0, 2 * width, height)), both

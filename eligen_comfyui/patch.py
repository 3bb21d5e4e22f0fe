"""The model patch that runs EliGen's regional attention inside ComfyUI's own FLUX.1 and Qwen-Image models.

EliGen Apply gives each conditioning entry a `Regions` value (a model condition, so it reaches the diffusion model
with the entry it belongs to, and ComfyUI never batches two entries with different regions together) and a hook
that brings the patch to whichever MODEL samples the conditioning. The patch has three parts, all through
ComfyUI's public patching interfaces:

* a DIFFUSION_MODEL wrapper that takes the entry's `Regions`, checks it against the latent and the text it runs
  with, and makes it the active one for that call;
* an attention override (`transformer_options["optimized_attention_override"]`) that gives every joint attention
  of the call eligen's additive mask (`eligen.pipeline.regional_attention`);
* for Qwen-Image, a replacement of every double block that gives each prompt group the text rotary positions of
  eligen's rule (`qwen_text_ids`: every group restarts where the text starts); FLUX's text positions are all zero,
  so its groups need nothing.

Entries without `Regions` (a plain negative prompt) run exactly as without the patch.
"""

from __future__ import annotations

import contextvars
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import comfy.hooks
import comfy.ldm.flux.model
import comfy.ldm.modules.attention
import comfy.ldm.qwen_image.model
import comfy.patcher_extension
import torch

from eligen.pipeline.families.qwen_image.encode import qwen_text_ids
from eligen.pipeline.regional_attention import regional_attention_mask

from .entities import SCALE_FACTOR

COND_KEY = "eligen_regions"  # the model condition carrying an entry's Regions
WRAPPER_KEY = "eligen_regional_attention"
FAMILIES = {comfy.ldm.flux.model.Flux: "flux", comfy.ldm.qwen_image.model.QwenImageTransformer2DModel: "qwen_image"}

_active: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("eligen_regions", default=None)
_holding_masks: weakref.WeakSet[Regions] = weakref.WeakSet()  # freed when a sampling ends


@dataclass(eq=False)  # compared by identity: ComfyUI batches two entries only when their conditions are equal
class Regions:
    """One conditioning entry's prompt groups and token regions, for a latent of one size."""

    token_regions: torch.Tensor  # (k, n_image) bool
    group_lengths: tuple[int, ...]  # k entity groups, then the global prompt
    width: int  # the image size the regions were made for, in pixels
    height: int
    _masks: dict[tuple[torch.dtype, torch.device], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def text_length(self) -> int:
        return sum(self.group_lengths)

    @property
    def length(self) -> int:
        return self.text_length + self.token_regions.shape[1]

    def check(self, x: torch.Tensor, context: torch.Tensor) -> None:
        """The latent and the text of this call must be the ones the regions were made for."""
        latent_h, latent_w = x.shape[-2:]
        if (latent_w * SCALE_FACTOR, latent_h * SCALE_FACTOR) != (self.width, self.height):
            raise ValueError(f"EliGen: the entities were placed on a {self.width}x{self.height} image, the sampler "
                             f"runs a {latent_w * SCALE_FACTOR}x{latent_h * SCALE_FACTOR} latent; give EliGen Apply "
                             "the latent's width and height")
        if context.shape[1] != self.text_length:
            raise ValueError(f"EliGen: the conditioning holds {context.shape[1]} text tokens, EliGen Apply made "
                             f"{self.text_length}; a node between EliGen Apply and the sampler changed the text "
                             "(connect EliGen Apply's outputs to the sampler directly)")

    def mask(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """eligen's (1, 1, N, N) additive mask for this entry (built once per dtype and device)."""
        key = (dtype, device)
        if key not in self._masks:
            self._masks[key] = regional_attention_mask(self.token_regions, self.group_lengths, dtype, device)
            _holding_masks.add(self)
        return self._masks[key]

    def text_rotary(self, pe: torch.Tensor) -> torch.Tensor:
        """Qwen-Image's rotary table with each group's text at eligen's positions (`qwen_text_ids`).

        ComfyUI gives text token j the position start + j; eligen gives it start + (j's position in its group).
        The rows are the same function of the position, so eligen's table is a gather of ComfyUI's text rows.
        """
        n_text = self.text_length
        positions = qwen_text_ids(self.group_lengths, pe).to(pe.device)
        return torch.cat([pe[:, positions], pe[:, n_text:]], dim=1)


@dataclass
class _Call:
    """The regions of the diffusion-model call now running, and how many attentions took their mask."""

    regions: Regions
    attentions: int = 0


def joint_attentions(diffusion_model: torch.nn.Module) -> int:
    """Joint attentions per call: FLUX's double and single blocks, Qwen-Image's blocks."""
    if family_of(diffusion_model) == "flux":
        return len(diffusion_model.double_blocks) + len(diffusion_model.single_blocks)
    return len(diffusion_model.transformer_blocks)


def family_of(diffusion_model: torch.nn.Module) -> str:
    """'flux' or 'qwen_image' for ComfyUI's FLUX.1 and Qwen-Image diffusion models, else a clear error."""
    family = FAMILIES.get(type(diffusion_model))
    if family is None:
        raise ValueError(f"EliGen Apply: the MODEL is a {type(diffusion_model).__name__}; EliGen runs on FLUX.1 "
                         "(dev, schnell, Krea, Kontext without reference images) and Qwen-Image models")
    return family


def _run_with_regions(executor: Callable[..., Any], x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      *args: Any, attentions: int, **kwargs: Any) -> Any:
    regions = kwargs.pop(COND_KEY, None)
    if regions is None:
        return executor(x, timestep, context, *args, **kwargs)
    regions.check(x, context)
    call = _Call(regions)
    token = _active.set(call)
    try:
        out = executor(x, timestep, context, *args, **kwargs)
    finally:
        _active.reset(token)
    if call.attentions != attentions:
        raise RuntimeError(f"EliGen: {call.attentions} of the model's {attentions} joint attentions took the regional "
                           "mask; this ComfyUI, or another patch on the model, runs attention past ComfyUI's "
                           "attention override, so the regions cannot be applied")
    return out


def _free_masks_after(executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Around a whole sampling: the masks are built once for it and not kept (the conditioning outlives it)."""
    try:
        return executor(*args, **kwargs)
    finally:
        for regions in list(_holding_masks):
            regions._masks.clear()
        _holding_masks.clear()


def _regional_attention(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    call = _active.get()
    if call is None:
        return func(*args, **kwargs)
    regions = call.regions
    q = args[0]
    n = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
    given = args[4] if len(args) > 4 else kwargs.get("mask")
    if n != regions.length or given is not None:
        raise ValueError(f"EliGen: an attention over {n} tokens{' with a mask of its own' if given is not None else ''}"
                         f" where EliGen expects {regions.length} tokens and no other mask; reference latents, "
                         "IP-Adapters and other nodes that add tokens or masks cannot run with EliGen Apply")
    mask = regions.mask(q.dtype, q.device)
    call.attentions += 1
    if func is getattr(comfy.ldm.modules.attention, "attention_sage", None):
        func = comfy.ldm.modules.attention.attention_pytorch  # SageAttention's masks are not relied on
    if len(args) > 4:
        return func(*args[:4], mask, *args[5:], **kwargs)
    return func(*args, **{**kwargs, "mask": mask})


def _qwen_block(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    call = _active.get()
    if call is not None:
        args = {**args, "pe": call.regions.text_rotary(args["pe"])}
    return extra["original_block"](args)


def regions_hooks(diffusion_model: torch.nn.Module) -> comfy.hooks.HookGroup:
    """The patch as a conditioning hook (ComfyUI's TransformerOptionsHook): it comes with the conditioning to
    whichever MODEL samples it, so no model output has to be wired to the sampler."""
    wrappers = comfy.patcher_extension.WrappersMP
    options: dict[str, Any] = {
        "wrappers": {
            wrappers.DIFFUSION_MODEL: {WRAPPER_KEY: [
                functools.partial(_run_with_regions, attentions=joint_attentions(diffusion_model))]},
            wrappers.OUTER_SAMPLE: {WRAPPER_KEY: [_free_masks_after]},
        },
        "optimized_attention_override": _regional_attention,
    }
    if family_of(diffusion_model) == "qwen_image":
        blocks = range(len(diffusion_model.transformer_blocks))
        options["patches_replace"] = {"dit": {("double_block", i): _qwen_block for i in blocks}}
    group = comfy.hooks.HookGroup()
    group.add(comfy.hooks.TransformerOptionsHook(options, comfy.hooks.EnumHookScope.AllConditioning))
    return group

"""Applying LoRAs to a transformer of any family: per-module low-rank deltas, attached by hooks or fused.

A family's key reader (for FLUX `families/flux/lora.py`, three key styles) turns a file into `LoraDelta`s named
after the diffusers modules; everything here works on those names only.

Effective weight of a target Linear: ``W + sum_l user_scale_l * alpha_l / rank_l * B_l @ A_l``
(``alpha / rank`` is 1 when the file has no alpha).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model_info import ModelLoadError

# How many offending keys an error message spells out (``LoraError.keys`` always holds all of them).
MAX_LISTED = 40

# Names of what apply_loras attaches to a Linear (non-persistent buffers, so state_dict() is unchanged).
_FACTORS_ATTR = "_eligen_lora_factors"
_HANDLE_ATTR = "_eligen_lora_handle"
_DOWN_BUFFER = "eligen_lora_down_{}"
_UP_BUFFER = "eligen_lora_up_{}"


class LoraError(ModelLoadError):
    """A LoRA that cannot be read or applied as asked.

    The message names the file where known and lists the offending keys (or modules); ``keys`` holds all of
    them, ``source`` the file.
    """

    def __init__(self, message: str, *, keys: Iterable[str] = (), source: str | Path | None = None) -> None:
        self.keys: tuple[str, ...] = tuple(keys)
        self.source = None if source is None else str(source)
        text = f"{self.source}: {message}" if self.source else message
        if self.keys:
            listed = "\n  ".join(self.keys[:MAX_LISTED])
            more = len(self.keys) - MAX_LISTED
            text += f"\n  {listed}" + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(text)


@dataclass(frozen=True, eq=False)
class LoraDelta:
    """One low-rank update of one diffusers Linear: ``W += scale * up @ down`` (times the user's scale).

    Attributes:
        module: the diffusers module name, e.g. ``"transformer_blocks.0.attn.to_q"``.
        down: A, shape ``(r, in_features)``.
        up: B, shape ``(out_features, r)``.
        scale: ``alpha / r`` (1 when the LoRA has no alpha); the user's scale is not included.
    """

    module: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    def __post_init__(self) -> None:
        if self.down.ndim != 2 or self.up.ndim != 2 or self.up.shape[1] != self.down.shape[0]:
            raise LoraError(
                f"LoRA factors of {self.module} do not chain: down {tuple(self.down.shape)}, "
                f"up {tuple(self.up.shape)} (need down (r, in) and up (out, r))"
            )


def _lora_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
    """Add ``sum_l factor_l * B_l (A_l x)`` to a Linear's output, computed in at least float32."""
    x = args[0] if args else kwargs["input"]
    extra: torch.Tensor | None = None
    for k, factor in enumerate(getattr(module, _FACTORS_ATTR)):
        down = getattr(module, _DOWN_BUFFER.format(k))
        up = getattr(module, _UP_BUFFER.format(k))
        dtype = torch.promote_types(torch.promote_types(x.dtype, down.dtype), torch.float32)
        term = F.linear(F.linear(x.to(dtype), down.to(x.device, dtype)), up.to(x.device, dtype)) * factor
        extra = term if extra is None else extra + term
    if extra is None:
        return output
    return (output.to(extra.dtype) + extra).to(output.dtype)


def lora_targets(transformer: nn.Module, deltas: Iterable[LoraDelta]) -> dict[str, nn.Linear]:
    """The Linear each delta applies to, by module name; a :class:`LoraError` listing every delta whose module does
    not exist, is not a Linear, or whose factors do not fit it."""
    problems: list[str] = []
    targets: dict[str, nn.Linear] = {}
    for delta in deltas:
        try:
            module = transformer.get_submodule(delta.module)
        except AttributeError:
            problems.append(f"{delta.module}: no such module")
            continue
        if not isinstance(module, nn.Linear):
            problems.append(f"{delta.module}: is a {type(module).__name__}, not a torch.nn.Linear")
        elif delta.down.shape[1] != module.in_features or delta.up.shape[0] != module.out_features:
            problems.append(f"{delta.module}: LoRA down {tuple(delta.down.shape)} / up {tuple(delta.up.shape)} "
                            f"do not fit a Linear({module.in_features}, {module.out_features})")
        else:
            targets[delta.module] = module
    if problems:
        raise LoraError("LoRA deltas do not fit the transformer", keys=problems)
    return targets


def apply_loras(transformer: nn.Module, loras: Sequence[tuple[list[LoraDelta], float]], *, fuse: bool = False) -> None:
    """Attach several LoRAs, each with its own user scale ``s``.

    Unfused (default), every target Linear gets a forward hook computing ``W x + b + sum s*scale*B(A x)``
    exactly. The factors are stored as non-persistent buffers on the Linear (they follow ``.to()`` and stay
    out of ``state_dict()``) in the wider of their own and the weight's dtype; the LoRA branch is computed
    in at least float32 (as peft does) and added to the output in the output's dtype. A module that
    receives several LoRAs (in one call or several) gets all of them; :func:`remove_loras` detaches them.
    With ``fuse=True`` the weights are patched instead, ``W += s * scale * up @ down`` (summed in float32,
    rounded once to the weight's dtype); this cannot be undone.

    Everything is checked before anything changes: a module that does not exist or is not a Linear, or
    factors whose shapes do not fit it, raise :class:`LoraError` listing every problem.
    """
    targets = lora_targets(transformer, [delta for deltas, _ in loras for delta in deltas])
    with torch.no_grad():
        if fuse:
            updates: dict[str, torch.Tensor] = {}
            for deltas, user_scale in loras:
                for delta in deltas:
                    weight = targets[delta.module].weight
                    term = (user_scale * delta.scale) * (
                        delta.up.to(weight.device, torch.float32) @ delta.down.to(weight.device, torch.float32)
                    )
                    updates[delta.module] = updates[delta.module] + term if delta.module in updates else term
            for name, update in updates.items():
                weight = targets[name].weight
                weight.copy_((weight.to(torch.float32) + update).to(weight.dtype))
            return

        for deltas, user_scale in loras:
            for delta in deltas:
                module = targets[delta.module]
                weight = module.weight
                dtype = torch.promote_types(torch.promote_types(delta.down.dtype, delta.up.dtype), weight.dtype)
                if not hasattr(module, _FACTORS_ATTR):
                    setattr(module, _FACTORS_ATTR, [])
                    setattr(module, _HANDLE_ATTR, module.register_forward_hook(_lora_hook, with_kwargs=True))
                factors: list[float] = getattr(module, _FACTORS_ATTR)
                k = len(factors)
                module.register_buffer(
                    _DOWN_BUFFER.format(k),
                    delta.down.detach().to(weight.device, dtype, copy=True),
                    persistent=False,
                )
                module.register_buffer(
                    _UP_BUFFER.format(k),
                    delta.up.detach().to(weight.device, dtype, copy=True),
                    persistent=False,
                )
                factors.append(float(user_scale) * delta.scale)


def remove_loras(transformer: nn.Module) -> int:
    """Detach every LoRA that :func:`apply_loras` attached unfused; returns how many modules were restored.

    Fused LoRAs are part of the weights and stay.
    """
    restored = 0
    for module in transformer.modules():
        if not hasattr(module, _FACTORS_ATTR):
            continue
        getattr(module, _HANDLE_ATTR).remove()
        for k in range(len(getattr(module, _FACTORS_ATTR))):
            delattr(module, _DOWN_BUFFER.format(k))
            delattr(module, _UP_BUFFER.format(k))
        delattr(module, _FACTORS_ATTR)
        delattr(module, _HANDLE_ATTR)
        restored += 1
    return restored

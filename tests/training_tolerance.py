"""How close two runs of the same training must end: rounding apart, not a real difference."""

from __future__ import annotations

import torch

# AdamW moves a weight by about `lr` per step whatever the gradient's scale (its update is m / sqrt(v)), so two
# trainings that really differ (a shard trained alone, a gradient all-reduce skipped, other samples) end up to
# ~2 * lr * steps apart in many weights. Rounding (a gloo all-reduce sums in another order than a batch of two,
# other threads, other kernels) perturbs each update by a tiny fraction of lr: measured at most 1.4e-3 * lr per
# weight after 4 steps of the distributed test. 1% of lr * steps sits about 30x above that and 100x below a fault.
ROUNDING_FRACTION = 0.01


def trained_alike(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lr: float, steps: int) -> float:
    """The largest difference between the two runs' weights, asserted to be rounding (see ROUNDING_FRACTION)."""
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= ROUNDING_FRACTION * lr * steps, f"weights differ by {worst:.3g} (lr {lr}, {steps} steps)"
    return worst

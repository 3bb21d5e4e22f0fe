"""The torch CPU thread count a loaded model runs with (`--threads`, OMP_NUM_THREADS, small models)."""

from __future__ import annotations

import pytest
import torch

from eligen.pipeline.devices import SMALL_MODEL_PARAMETERS, pick_threads

CPU = torch.device("cpu")


def _linear(parameters: int) -> torch.nn.Module:
    """A module with exactly `parameters` parameters (weights of one row each, no bias), on the meta device."""
    return torch.nn.Linear(parameters, 1, bias=False, device="meta")


def test_small_model_on_the_cpu_gets_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert pick_threads(None, CPU, _linear(SMALL_MODEL_PARAMETERS - 1)) == 1


def test_large_model_or_accelerator_keeps_torchs_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert pick_threads(None, CPU, _linear(SMALL_MODEL_PARAMETERS)) is None
    assert pick_threads(None, torch.device("cuda"), _linear(10)) is None


def test_environment_and_option_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert pick_threads(None, CPU, _linear(10)) is None  # torch already follows the variable
    assert pick_threads(3, CPU, _linear(10)) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert pick_threads(2, CPU, _linear(10)) == 2


def test_generate_on_the_shapes_model_runs_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real loaded built-in model is below the bound (the choice is made on what `eligen generate` loads)."""
    from eligen.pipeline.generate import EligenPipeline

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    pipe = EligenPipeline.from_pretrained("shapes", device="cpu")
    assert pick_threads(None, pipe.device, pipe.transformer) == 1

"""The torch CPU thread count a loaded model runs with (`--threads`, OMP_NUM_THREADS, small models)."""

from __future__ import annotations

from pathlib import Path

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


def test_eval_runs_a_small_model_on_one_thread(tiny_model: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`eligen eval` (like generate, transfer, the studio and the agent) makes the same choice on what it loads."""
    from typer.testing import CliRunner

    from eligen.main import app
    from eligen.pipeline.shapes.scenes import write_shapes_dataset

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    write_shapes_dataset(tmp_path / "d", 1, seed=0, counts=(2,), layouts=tmp_path / "layouts")
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "layouts"), "--model", str(tiny_model), "--seeds", "1",
                                      "--steps", "1", "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert chosen == [1]

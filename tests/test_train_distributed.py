"""Two training processes through accelerate's launcher (torchrun, gloo on the CPU) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from training_tolerance import trained_alike

from eligen.pipeline.train.config import TrainConfig
from eligen.pipeline.train.example import write_example_dataset
from eligen.pipeline.train.loop import train

OPTIONS = {"steps": "4", "rank": "4", "lr": "0.01", "resolution": "64", "bucket-step": "16", "num-workers": "0",
           "save-every": "2", "entity-dropout": "0.3"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting cores


def test_two_processes_train_the_weights_of_one(tiny_model: Path, tmp_path: Path) -> None:
    data = write_example_dataset(tmp_path / "data", 8)
    arguments = [f"--{k}={v}" for k, v in OPTIONS.items()]
    command = [sys.executable, "-m", "eligen", "train", "--data", str(data), "--model", str(tiny_model),
               "-o", str(tmp_path / "two"), "--batch-size", "1", "--num-processes", "2",
               "--no-gradient-checkpointing", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)  # a guard only
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-000004").glob("rng-*")) == [
        "rng-0.safetensors", "rng-1.safetensors"]

    options = {k.replace("-", "_"): v for k, v in OPTIONS.items()}
    one = TrainConfig(data=data, model=str(tiny_model), output=tmp_path / "one", batch_size=2,
                      gradient_checkpointing=False, **options)
    train(one)
    a, b = load_file(tmp_path / "one" / "lora.safetensors"), load_file(tmp_path / "two" / "lora.safetensors")
    # The same weights up to rounding: the all-reduce of two processes sums in another order than one batch of two
    trained_alike(a, b, float(OPTIONS["lr"]), int(OPTIONS["steps"]))
    assert any(a[k].abs().max() > 1e-2 for k in a if "lora_B" in k)  # it did train

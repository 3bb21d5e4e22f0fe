"""`eligen train` on the command line: options from a YAML file and the command line, errors and exit statuses, and
the trained LoRA in `eligen generate --lora`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.train.example import write_example_dataset

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting cores


def _config_file(folder: Path, tiny_model: Path, **options: object) -> Path:
    write_example_dataset(folder / "data", 8)
    values = {"data": "data", "model": str(tiny_model), "steps": 100, "rank": 4, "lr": 0.01, "resolution": 64,
              "bucket-step": 16, "batch_size": 2, "num_workers": 0, "save_every": 0, "gradient_checkpointing": False,
              **options}
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def test_train_then_generate_with_the_lora(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_file(tmp_path, tiny_model)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--config", str(config), "-o", "run", "--steps", "3", "--alpha", "8"])
    assert result.exit_code == 0, result.output
    assert "step 3" in result.output and "run/lora.safetensors" in result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["steps"] == 3 and saved["rank"] == 4 and saved["alpha"] == 8  # the command line wins over the file
    assert saved["data"] == str(tmp_path / "data")  # file paths are relative to the config file

    layout = {"model": str(tiny_model), "size": [64, 64], "steps": 3, "seed": 1, "prompt": "a red box",
              "entities": [{"prompt": "a red box", "box": [8, 8, 40, 40]}]}
    (tmp_path / "scene.yaml").write_text(json.dumps(layout), encoding="utf-8")
    result = runner.invoke(app, ["generate", "scene.yaml", "-o", "with.png", "--lora", "run/lora.safetensors"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["generate", "scene.yaml", "-o", "without.png"]).exit_code == 0
    with_lora, without = (np.asarray(Image.open(tmp_path / n), dtype=int) for n in ("with.png", "without.png"))
    assert np.abs(with_lora - without).max() > 0


def test_option_errors_exit_2_and_name_the_option(tiny_model: Path, tmp_path: Path) -> None:
    config = _config_file(tmp_path, tiny_model, learning_rate=1e-4)
    result = runner.invoke(app, ["train", "--config", str(config), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "train.yaml: learning_rate: unknown option" in result.output
    config, out = _config_file(tmp_path, tiny_model), str(tmp_path / "run")
    result = runner.invoke(app, ["train", "--config", str(config), "-o", out, "--timesteps", "cosine"])
    assert result.exit_code == 2 and "'cosine' is not one of" in result.output
    result = runner.invoke(app, ["train", "--config", str(config), "-o", out, "--rank", "0"])
    assert result.exit_code == 2 and "--rank on the command line: rank:" in result.output
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "data: this option is required" in result.output
    (tmp_path / "deep.yaml").write_text("data: " + "[" * 5000 + "]" * 5000 + "\n")
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "deep.yaml"), "-o", out])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "deep.yaml: (yaml): expected a valid YAML file: expected lists and mappings nested at most a few " \
           "hundred levels deep" in " ".join(result.output.split())


def test_a_finished_run_is_not_overwritten(tiny_model: Path, tmp_path: Path) -> None:
    config = _config_file(tmp_path, tiny_model, steps=1)
    out = str(tmp_path / "run")
    assert runner.invoke(app, ["train", "--config", str(config), "-o", out]).exit_code == 0
    result = runner.invoke(app, ["train", "--config", str(config), "-o", out])
    assert result.exit_code == 1 and "--resume latest" in result.output
    result = runner.invoke(app, ["train", "--config", str(config), "-o", out, "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "expected a checkpoint folder" in result.output
    result = runner.invoke(app, ["train", "--config", str(config), "-o", out, "--resume", "latest", "--steps", "2"])
    assert result.exit_code == 0 and "step 2" in result.output


def test_timestep_shift_is_for_logit_normal_timesteps(tiny_model: Path, tmp_path: Path) -> None:
    config, out = _config_file(tmp_path, tiny_model), str(tmp_path / "run")
    result = runner.invoke(app, ["train", "--config", str(config), "-o", out, "--timesteps", "reference",
                                 "--timestep-shift", "3"])
    assert result.exit_code == 2
    assert "--timestep-shift on the command line: timestep_shift: applies to timesteps: logit-normal only" \
           in " ".join(result.output.split())
    result = runner.invoke(app, ["train", "--config", str(config), "-o", out, "--timestep-shift", "0"])
    assert result.exit_code == 2 and "timestep_shift: input should be greater than 0" in " ".join(result.output.split())

"""Which family a model is: told from model_index.json (`_class_name`), locally or from the hub, never assumed."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline import model_info

runner = CliRunner()


def _index(folder: Path, pipeline_class: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    return folder


def test_a_hub_model_is_told_by_its_model_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"someone/qwen-finetune": _index(tmp_path / "q", "QwenImagePipeline"),
             "someone/flux-finetune": _index(tmp_path / "f", "FluxPipeline"),
             "someone/sdxl": _index(tmp_path / "s", "StableDiffusionXLPipeline")}
    asked = []

    def download(repo_id: str, filename: str, **_: object) -> str:
        asked.append((repo_id, filename))
        return str(files[repo_id] / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    model_info._hub_pipeline_class.cache_clear()
    assert model_info.model_family("someone/qwen-finetune").name == "qwen-image"
    assert model_info.model_family("someone/flux-finetune").name == "flux"
    with pytest.raises(model_info.ModelLoadError, match=r"someone/sdxl is a StableDiffusionXLPipeline model.*"
                       r"FluxPipeline \(flux\), QwenImagePipeline \(qwen-image\)"):
        model_info.model_family("someone/sdxl")
    model_info.model_family("someone/qwen-finetune")
    assert asked.count(("someone/qwen-finetune", "model_index.json")) == 1  # read once per process
    assert model_info.model_family("Qwen/Qwen-Image").name == "qwen-image"  # the table: no download
    assert all(repo != "Qwen/Qwen-Image" for repo, _ in asked)
    model_info._hub_pipeline_class.cache_clear()


def test_an_unreadable_hub_index_falls_back_to_flux(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(repo_id: str, filename: str, **_: object) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    model_info._hub_pipeline_class.cache_clear()
    assert model_info.model_family("someone/not-cached").name == "flux"
    model_info._hub_pipeline_class.cache_clear()


def test_a_folder_of_an_unknown_family_is_one_clear_error(tmp_path: Path) -> None:
    folder = _index(tmp_path / "sdxl", "StableDiffusionXLPipeline")
    layout = tmp_path / "layout.yaml"
    layout.write_text(f"model: {folder}\nsize: [64, 64]\nprompt: a table\n")
    result = runner.invoke(app, ["generate", str(layout), "--dry-run"])
    assert result.exit_code == 1
    assert "is a StableDiffusionXLPipeline model (model_index.json); eligen runs FluxPipeline" in result.output
    assert "Traceback" not in result.output

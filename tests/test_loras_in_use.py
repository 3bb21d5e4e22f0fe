"""LoRAs in layouts and on the command line, the default EliGen LoRA, and hub errors."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline import hub
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import LayoutError, LoraSpec, parse_layout
from eligen.pipeline.model_info import ModelLoadError
from eligen.pipeline.outputs import read_png_metadata

runner = CliRunner()


def _write_lora(path: Path, seed: int = 0) -> Path:
    """A peft-style rank-2 LoRA for the tiny model (two dual-block and one single-block layer)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for module, (out_f, in_f) in {"transformer_blocks.0.attn.to_q": (32, 32),
                                  "transformer_blocks.1.ff.net.2": (32, 128),
                                  "single_transformer_blocks.0.proj_out": (32, 160)}.items():
        state[f"transformer.{module}.lora_A.weight"] = torch.randn(2, in_f, generator=g)
        state[f"transformer.{module}.lora_B.weight"] = torch.randn(out_f, 2, generator=g)
    save_file(state, path)
    return path


def _layout_file(folder: Path, model: Path, loras: list | None = None) -> Path:
    data = {"model": str(model), "size": [64, 64], "steps": 2, "seed": 1, "prompt": "a boat",
            "entities": [{"prompt": "a red boat", "box": [0, 0, 32, 64]}]}
    if loras is not None:
        data["loras"] = loras
    path = folder / f"layout-{len(list(folder.glob('*.yaml')))}.yaml"
    path.write_text(json.dumps(data))
    return path


def test_lora_from_layout_and_command_line(tiny_model: Path, tmp_path: Path) -> None:
    lora = _write_lora(tmp_path / "style.safetensors")

    def render(name: str, layout: Path, *extra: str) -> np.ndarray:
        result = runner.invoke(app, ["generate", str(layout), "-o", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        return np.asarray(Image.open(tmp_path / name))

    plain = render("plain.png", _layout_file(tmp_path, tiny_model))
    in_file = render("file.png", _layout_file(tmp_path, tiny_model, [{"path": "style.safetensors", "scale": 1.5}]))
    on_cli = render("cli.png", _layout_file(tmp_path, tiny_model), "--lora", str(lora), "--lora-scale", "1.5")
    fused = render("fused.png", _layout_file(tmp_path, tiny_model), "--lora", str(lora), "--lora-scale", "1.5",
                   "--fuse-loras")
    zero = render("zero.png", _layout_file(tmp_path, tiny_model), "--lora", str(lora), "--lora-scale", "0")
    assert not np.array_equal(plain, in_file)
    assert np.array_equal(in_file, on_cli)
    assert np.abs(fused.astype(int) - on_cli).max() <= 1  # fused weights round differently, by at most 1/255
    assert np.array_equal(plain, zero)
    recorded = read_png_metadata(tmp_path / "cli.png")["layout"]["loras"]
    assert recorded == [{"path": str(lora), "scale": 1.5}]


def test_lora_for_another_architecture_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)},
              tmp_path / "sdxl.safetensors")
    result = runner.invoke(app, ["generate", str(_layout_file(tmp_path, tiny_model)), "-o", str(tmp_path / "x.png"),
                                 "--lora", str(tmp_path / "sdxl.safetensors")])
    assert result.exit_code == 1, result.output
    assert "sdxl.safetensors" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_swapping_loras_between_layouts_on_one_model(tiny_pipe: EligenPipeline, tmp_path: Path) -> None:
    a, b = _write_lora(tmp_path / "a.safetensors", 1), _write_lora(tmp_path / "b.safetensors", 2)
    base = {"size": [64, 64], "steps": 2, "prompt": "a boat"}
    with_a = tiny_pipe.generate(parse_layout({**base, "loras": [{"path": str(a)}]}), [0])[0]
    with_b = tiny_pipe.generate(parse_layout({**base, "loras": [{"path": str(b)}]}), [0])[0]
    again_a = tiny_pipe.generate(parse_layout({**base, "loras": [{"path": str(a)}]}), [0])[0]
    none = tiny_pipe.generate(parse_layout({**base, "loras": []}), [0])[0]
    default = tiny_pipe.generate(parse_layout(base), [0])[0]  # the tiny model has no default LoRA
    assert np.array_equal(np.asarray(with_a), np.asarray(again_a))
    assert not np.array_equal(np.asarray(with_a), np.asarray(with_b))
    assert np.array_equal(np.asarray(none), np.asarray(default))


def test_flux_dev_defaults_to_the_eligen_lora() -> None:
    flux_dev = EligenPipeline(family=None, model="black-forest-labs/FLUX.1-dev")
    assert flux_dev.lora_specs(parse_layout({"prompt": "a"})) == [
        LoraSpec(path="modelscope/EliGen", file="model_bf16.safetensors")]
    assert flux_dev.lora_specs(parse_layout({"prompt": "a", "loras": []})) == []
    other = EligenPipeline(family=None, model="black-forest-labs/FLUX.1-schnell")
    assert other.lora_specs(parse_layout({"prompt": "a"})) == []


def test_lora_specs_resolve_locally_or_on_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.safetensors").write_bytes(b"")
    assert hub.lora_file(LoraSpec(path="mine.safetensors"), tmp_path, "l.yaml", "loras[0]") == \
        tmp_path / "mine.safetensors"
    asked = []
    monkeypatch.setattr(hub, "fetch", lambda repo, name: asked.append((repo, name)) or tmp_path / name)
    hub.lora_file(LoraSpec(path="org/repo", file="w.safetensors"), tmp_path, "l.yaml", "loras[0]")
    hub.lora_file(LoraSpec(path="org/repo/sub/w.safetensors"), tmp_path, "l.yaml", "loras[0]")
    assert asked == [("org/repo", "w.safetensors"), ("org/repo", "sub/w.safetensors")]
    with pytest.raises(LayoutError, match=r"loras\[0\].*neither"):
        hub.lora_file(LoraSpec(path="./missing.safetensors"), tmp_path, "l.yaml", "loras[0]")


def test_offline_with_empty_cache_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        hub.fetch("modelscope/EliGen", "model_bf16.safetensors")


def test_gated_model_error_says_how_to_get_access() -> None:
    from huggingface_hub.errors import GatedRepoError

    gated = GatedRepoError.__new__(GatedRepoError)  # its constructor wants a live HTTP response
    Exception.__init__(gated, "403 Client Error: gated repo")
    message = str(hub.hub_error(gated, "black-forest-labs/FLUX.1-dev", "model_index.json"))
    assert "accept its licence" in message and "huggingface-cli login" in message and "HF_TOKEN" in message

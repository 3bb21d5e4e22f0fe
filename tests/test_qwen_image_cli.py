"""Every command on a tiny Qwen-Image folder, through the real entry point: tiny-model, generate, preview,
inpaint (both fusions), train (the reference's target modules, rank 32 by default, the released key style),
eval, and the agent's renderer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from eligen.agent.render import Renderer
from eligen.main import app
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_edits, parse_layout
from eligen.pipeline.lora import LoraDelta
from eligen.pipeline.outputs import read_png_metadata
from eligen.pipeline.shapes.scenes import write_shapes_dataset
from eligen.pipeline.train.example import write_example_dataset

runner = CliRunner()
TARGETS = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
           "attn.to_out.0", "attn.to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting cores


def test_tiny_model_command_writes_a_qwen_image_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "q"), "--family", "qwen-image"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "q" / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImagePipeline"
    again = runner.invoke(app, ["tiny-model", str(tmp_path / "q"), "--family", "qwen-image"])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def _layout_file(folder: Path, model: Path) -> Path:
    data = {"model": str(model), "size": [96, 64], "steps": 2, "seed": 5, "loras": [],
            "prompt": "一只红色的猫和一只蓝色的狗", "negative_prompt": " ",
            "entities": [{"prompt": "一只红色的猫", "box": [0, 0, 48, 64]},
                         {"prompt": "a blue dog", "box": [48, 0, 96, 64]}]}
    path = folder / "scene.yaml"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_generate_and_preview(tiny_qwen_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _layout_file(tmp_path, tiny_qwen_model)
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["preview", str(layout), "-o", "p.png"]).exit_code == 0
    result = runner.invoke(app, ["generate", str(layout), "--preview"])
    assert result.exit_code == 0, result.output
    metadata = read_png_metadata(tmp_path / "scene.png")
    assert metadata["layout"]["max_sequence_length"] == 1024 and metadata["layout"]["loras"] == []
    assert Image.open(tmp_path / "scene.png").size == (96, 64)
    again = runner.invoke(app, ["generate", str(tmp_path / "scene.png"), "-o", "again.png"])
    assert again.exit_code == 0, again.output
    first, second = (np.asarray(Image.open(tmp_path / name)) for name in ("scene.png", "again.png"))
    assert np.array_equal(first, second)
    flex = runner.invoke(app, ["generate", str(layout), "-o", "f.png", "--attention", "flex"])
    assert flex.exit_code == 2 and "attention" in flex.output
    one = runner.invoke(app, ["generate", str(layout), "-o", "one.png", "--steps", "1"])
    assert one.exit_code == 2 and "steps" in one.output and not (tmp_path / "one.png").exists()


def _source(width: int = 96, height: int = 64) -> Image.Image:
    ys, xs = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([xs * 2, ys * 3, (xs + ys) % 256], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("fusion", ["paper", "exact"])
def test_inpaint_both_fusions(tiny_qwen_model: Path, tmp_path: Path, fusion: str) -> None:
    _source().save(tmp_path / "photo.png")
    edits = {"prompt": "a street", "seed": 2, "loras": [], "fusion": fusion,
             "entities": [{"prompt": "a red car", "box": [10, 10, 50, 40]}]}
    (tmp_path / "edits.yaml").write_text(json.dumps(edits))
    result = runner.invoke(app, ["inpaint", str(tmp_path / "photo.png"), str(tmp_path / "edits.yaml"), "-o",
                                 str(tmp_path / "out.png"), "--model", str(tiny_qwen_model), "--steps", "2"])
    assert result.exit_code == 0, result.output
    out, src = np.asarray(Image.open(tmp_path / "out.png")), np.asarray(_source())
    assert out.shape == src.shape and not np.array_equal(out[10:40, 10:50], src[10:40, 10:50])
    if fusion == "exact":  # far from the edited box every pixel is the source's own
        assert np.array_equal(out[:, 70:], src[:, 70:])


@pytest.mark.parametrize("cache", [False, True], ids=["live", "cached"])
def test_train_then_generate_with_the_lora(tiny_qwen_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           cache: bool) -> None:
    """Two steps (batches of 2 whose prompts have different lengths) on the reference's target modules at the
    family's rank 32, exported in the released key style, which reads back as the same deltas as the
    diffusers-style file; then generation with it."""
    write_example_dataset(tmp_path / "data", 4)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--data", "data", "--model", str(tiny_qwen_model), "-o", "run", "--steps",
                                 "2", "--alpha", "64", "--lr", "0.01", "--resolution", "64", "--bucket-step", "16",
                                 "--batch-size", "2", "--num-workers", "0", "--save-every", "0", "--export",
                                 "diffsynth", "--no-gradient-checkpointing", *(["--cache"] if cache else [])])
    assert result.exit_code == 0, result.output
    with safe_open(str(tmp_path / "run" / "lora_diffsynth.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert all(k.startswith("transformer_blocks.") and k.endswith((".lora_A.default.weight", ".lora_B.default.weight"))
               for k in keys)
    assert {k.split(".", 2)[2].rsplit(".", 3)[0] for k in keys} == TARGETS
    pipe = EligenPipeline.from_pretrained(str(tiny_qwen_model), device="cpu", dtype="fp32")

    def effective(deltas: list[LoraDelta]) -> dict[str, torch.Tensor]:
        return {d.module: d.scale * d.up @ d.down for d in deltas}

    peft = effective(pipe.family.load_lora(tmp_path / "run" / "lora.safetensors"))
    released = effective(pipe.family.load_lora(tmp_path / "run" / "lora_diffsynth.safetensors"))
    assert set(peft) == set(released) and len(peft) == 2 * len(TARGETS)
    assert next(iter(pipe.family.load_lora(tmp_path / "run" / "lora.safetensors"))).down.shape[0] == 32
    last = len(pipe.transformer.transformer_blocks) - 1
    # the model drops the last block's text-stream output, so the layers that only feed it (text queries, text
    # output projection, text MLP) get no gradient there
    unused = {f"transformer_blocks.{last}.{m}" for m in ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.2")}
    for module, delta in peft.items():
        torch.testing.assert_close(released[module], delta, rtol=1e-6, atol=1e-7)  # alpha/rank = 2 folded into B
        assert (delta.abs().max() > 0) == (module not in unused), module  # two steps moved B off zero

    layout = _layout_file(tmp_path, tiny_qwen_model)
    with_lora = runner.invoke(app, ["generate", str(layout), "-o", "with.png", "--lora",
                                    "run/lora_diffsynth.safetensors"])
    assert with_lora.exit_code == 0, with_lora.output
    assert runner.invoke(app, ["generate", str(layout), "-o", "without.png"]).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open("with.png")), np.asarray(Image.open("without.png")))


def test_kohya_export_is_refused_for_qwen_image(tiny_qwen_model: Path, tmp_path: Path) -> None:
    write_example_dataset(tmp_path / "data", 2)
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--model", str(tiny_qwen_model), "-o",
                                 str(tmp_path / "run"), "--export", "kohya", "--steps", "1"])
    assert result.exit_code != 0 and "diffsynth" in result.output


def test_eval_runs_on_qwen_image(tiny_qwen_model: Path, tmp_path: Path) -> None:
    write_shapes_dataset(tmp_path / "d", 1, seed=0, counts=(2,), layouts=tmp_path / "layouts")
    result = runner.invoke(app, ["eval", str(tmp_path / "layouts"), "--model", str(tiny_qwen_model), "--steps", "2",
                                 "--seeds", "1", "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    total = json.loads((tmp_path / "out" / "results.json").read_text())["levels"]["all"]
    assert total["images"] == 1 and total["instances"] == 2


def test_agent_renderer_generates_and_inpaints(tiny_qwen_model: Path, tmp_path: Path) -> None:
    renderer = Renderer(device="cpu", dtype="fp32")
    layout = parse_layout({"model": str(tiny_qwen_model), "size": [64, 64], "steps": 2, "prompt": "a red cat",
                           "loras": [], "entities": [{"prompt": "a red cat", "box": [0, 0, 32, 32]}]})
    renderer.generate(layout, tmp_path, 1, tmp_path / "g.png")
    assert read_png_metadata(tmp_path / "g.png")["layout"]["model"] == str(tiny_qwen_model)
    _source(64, 64).save(tmp_path / "photo.png")
    edits = parse_edits({"model": str(tiny_qwen_model), "steps": 2, "prompt": "a street", "loras": [],
                         "entities": [{"prompt": "a car", "box": [8, 8, 40, 40]}]}, (64, 64))
    renderer.inpaint(tmp_path / "photo.png", edits, tmp_path, 1, tmp_path / "i.png")
    assert Image.open(tmp_path / "i.png").size == (64, 64)


@pytest.mark.parametrize("name", ["qwen-poster.yaml", "qwen-chinese.yaml"])
def test_shipped_qwen_image_layouts_preview(name: str, tmp_path: Path) -> None:
    """The examples cannot be rendered here (no Qwen-Image weights); they validate and preview for Qwen-Image."""
    from eligen.pipeline import model_info
    from eligen.pipeline.layout import load_layout

    path = Path(__file__).parent.parent / "layouts" / name
    assert model_info.model_family(load_layout(path).model).name == "qwen-image"
    result = runner.invoke(app, ["preview", str(path), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output

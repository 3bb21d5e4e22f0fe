"""The command line end to end on the tiny model folder, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.outputs import read_png_metadata

runner = CliRunner()


def _write_layout(folder: Path, model: Path, **extra: object) -> Path:
    data = {
        "model": str(model), "size": [128, 96], "steps": 2, "seed": 5, "prompt": "a cat and a lamp",
        "negative_prompt": "blurry",
        "entities": [{"prompt": "a cat", "box": [0, 0, 64, 96]},
                     {"prompt": "a lamp", "mask": "lamp.png"}],
        **extra,
    }
    mask = np.zeros((96, 128), dtype=np.uint8)
    mask[16:80, 80:120] = 255
    Image.fromarray(mask).save(folder / "lamp.png")
    path = folder / "scene.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_generate_writes_png_with_metadata_and_reruns(tiny_model: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _write_layout(tmp_path, tiny_model)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["generate", str(layout), "--preview"])
    assert result.exit_code == 0, result.output
    image_path = tmp_path / "scene.png"
    assert (tmp_path / "scene.preview.png").is_file()
    metadata = read_png_metadata(image_path)
    assert metadata["seed"] == 5 and metadata["model"] == str(tiny_model)
    assert metadata["layout"]["entities"][1]["mask"].startswith("data:image/png;base64,")
    assert metadata["layout"]["max_sequence_length"] == 32

    moved = tmp_path / "elsewhere" / "moved.png"
    moved.parent.mkdir()
    image_path.rename(moved)
    (tmp_path / "lamp.png").unlink()  # the re-run must not need the mask file any more
    result = runner.invoke(app, ["generate", str(moved), "-o", str(tmp_path / "again.png")])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(moved)), np.asarray(Image.open(tmp_path / "again.png")))


def test_existing_output_is_refused_before_loading(tiny_model: Path, tmp_path: Path) -> None:
    layout = _write_layout(tmp_path, tiny_model)
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    result = runner.invoke(app, ["generate", str(layout), "-o", str(target)])
    assert result.exit_code == 1
    assert "out.png exists" in result.output and "--overwrite" in result.output
    assert target.read_bytes() == b"precious"
    assert "loading" not in result.output


def test_several_seeds_and_layouts_share_one_model(tiny_model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from eligen.pipeline.generate import EligenPipeline

    loads = []
    original = EligenPipeline.from_pretrained.__func__

    def counting(cls, model, **kwargs):
        loads.append(model)
        return original(cls, model, **kwargs)

    monkeypatch.setattr(EligenPipeline, "from_pretrained", classmethod(counting))
    first = _write_layout(tmp_path, tiny_model)
    second = tmp_path / "second.yaml"
    second.write_text(f"model: {tiny_model}\nsize: [64, 64]\nsteps: 1\nseed: 1\nprompt: a plain scene\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["generate", str(first), str(second), "--seed", "1", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert loads == [str(tiny_model)]
    assert sorted(p.name for p in tmp_path.glob("*.png") if p.name != "lamp.png") == [
        "scene-1.png", "scene-2.png", "second-1.png", "second-2.png"]
    a, b = (np.asarray(Image.open(tmp_path / f"scene-{s}.png")) for s in (1, 2))
    assert not np.array_equal(a, b)


def test_dry_run_validates_and_previews_only(tiny_model: Path, tmp_path: Path) -> None:
    layout = _write_layout(tmp_path, tiny_model)
    result = runner.invoke(app, ["generate", str(layout), "--dry-run", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.preview.png").is_file() and not (tmp_path / "x.png").exists()


def test_missing_seed_is_drawn_and_recorded(tiny_model: Path, tmp_path: Path) -> None:
    layout = tmp_path / "noseed.yaml"
    layout.write_text(f"model: {tiny_model}\nsize: [64, 64]\nsteps: 1\nprompt: something\n")
    result = runner.invoke(app, ["generate", str(layout), "-o", str(tmp_path / "n.png")])
    assert result.exit_code == 0, result.output
    assert isinstance(read_png_metadata(tmp_path / "n.png")["seed"], int)


def test_help_and_preview_do_not_import_torch(tmp_path: Path) -> None:
    layout = tmp_path / "p.yaml"
    layout.write_text("size: [256, 256]\nprompt: a desk\nentities:\n  - prompt: a book\n    box: [16, 16, 128, 96]\n")
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom eligen.main import app\n"
        f"r = CliRunner().invoke(app, ['preview', {str(layout)!r}, '-o', {str(tmp_path / 'p.png')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert Image.open(tmp_path / "p.png").size == (512, 512)

"""`eligen annotate` against a scripted chat-completions server: the training dataset format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_server import serve
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_annotate_writes_metadata_lines_and_skips_what_fails(tmp_path: Path) -> None:
    images = tmp_path / "images-in"
    images.mkdir()
    Image.new("RGB", (320, 200), (10, 200, 30)).save(images / "a.png")
    Image.new("RGB", (64, 64)).save(images / "b.jpg")
    (images / "c.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("ignored")
    good = json.dumps({"prompt": "a green field", "entities": [
        {"prompt": "../../escape.png", "bbox_2d": [0, 0, 500, 1000]},
        {"prompt": "grass", "bbox_2d": [500, 0, 1000, 500]}]})
    out = tmp_path / "dataset"
    with serve([good, "no", "still no"]) as server:
        args = ["annotate", str(images), "-o", str(out), "--mllm-url", server.url, "--mllm-family", "qwen2-vl"]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        again = runner.invoke(app, args)
    assert again.exit_code == 1 and "metadata.jsonl exists" in again.output
    assert "skipped c.png" in result.output and "skipped b.jpg" in result.output and "1 of 3 images" in result.output
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"image": "images/a.png", "prompt": "a green field", "entities": [
        {"prompt": "../../escape.png", "box": [0, 0, 160, 200]}, {"prompt": "grass", "box": [160, 0, 320, 100]}]}]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["images", "images/a.png",
                                                                              "metadata.jsonl"]

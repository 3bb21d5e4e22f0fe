"""`eligen chat` with piped input end to end: a scripted MLLM on 127.0.0.1 and the tiny FLUX model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_server import serve
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.layout import load_layout
from eligen.pipeline.outputs import read_png_metadata

runner = CliRunner()


def _answer(prompt: str, *entities: tuple[str, list[int]]) -> str:
    return json.dumps({"prompt": prompt, "entities": [{"prompt": p, "bbox_2d": b} for p, b in entities]})


DESIGN = _answer("a cat on a sofa", ("a grey cat", [500, 300, 900, 900]), ("a red sofa", [0, 500, 1000, 1000]))
REFINED = _answer("a cat on a sofa", ("a grey cat", [50, 300, 450, 900]), ("a red sofa", [0, 500, 1000, 1000]))
EDIT = _answer("a ginger cat on a red sofa", ("a ginger cat", [50, 300, 450, 900]))


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ELIGEN_MLLM_URL", raising=False)


def _chat(url: str, folder: Path, model: Path, lines: list[str]) -> object:
    return runner.invoke(app, ["chat", "--session", str(folder), "--model", str(model), "--size", "128", "96",
                               "--steps", "2", "--device", "cpu", "--mllm-url", url, "--mllm-family", "qwen2-vl",
                               "--mllm-retries", "0"], input="\n".join(lines) + "\n")


def test_design_refine_render_edit_undo_save(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "session"
    lines = ["a cat on a sofa", "move the cat left", "/render", "/edit make the cat ginger", "/undo",
             f"/save {tmp_path / 'mine.yaml'}", f"/save {tmp_path / 'mine.png'}", "/quit", "never read"]
    with serve([DESIGN, REFINED, EDIT]) as server:
        result = _chat(server.url, folder, tiny_model, lines)
    assert result.exit_code == 0, result.output
    assert f"preview: {folder / 'layout-001.preview.png'}" in result.output
    assert f"preview: {folder / 'layout-002.preview.png'}" in result.output

    first, second = load_layout(folder / "layout-001.yaml"), load_layout(folder / "layout-002.yaml")
    assert first.entities[0].box == (64, 29, 115, 86) and second.entities[0].box == (6, 29, 58, 86)
    assert str(second.model) == str(tiny_model) and second.steps == 2 and second.size == (128, 96)
    refine = server.chat_requests[1]["body"]["messages"][1]["content"]
    assert '"bbox_2d": [500, 302, 898, 896]' in refine and "move the cat left" in refine

    metadata = read_png_metadata(folder / "image-003.png")
    assert metadata["layout"]["entities"][0]["box"] == [6, 29, 58, 86]
    edits = load_layout(folder / "edits-004.yaml", image_size=(128, 96))
    assert edits.entities[0].prompt == "a ginger cat" and edits.steps == 2
    assert read_png_metadata(folder / "image-004.png")["source_image"] == "image-003.png"
    assert (folder / "edits-004.preview.png").is_file()
    assert server.chat_requests[2]["body"]["messages"][1]["content"][0]["type"] == "image_url"

    state = json.loads((folder / "session.json").read_text())
    assert [s["image"] for s in state["steps"]] == [None, None, "image-003.png"]  # the edit was undone
    assert load_layout(tmp_path / "mine.yaml") == second
    assert read_png_metadata(tmp_path / "mine.png")["seed"] == state["seed"]
    roles = [json.loads(line)["role"] for line in (folder / "transcript.jsonl").read_text().splitlines()]
    assert roles.count("user") == 8 and roles.count("assistant") == 3


def test_resume_and_errors_keep_the_conversation_going(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "session"
    with serve([DESIGN]) as server:
        assert _chat(server.url, folder, tiny_model, ["a cat on a sofa"]).exit_code == 0
    with serve(["not json", "still not json"]) as server:
        result = _chat(server.url, folder, tiny_model, [
            "/show", "/render abc", "/bogus", "/edit more cats", "make it night", "/undo", "/undo", "/show"])
    assert result.exit_code == 1  # some commands failed: scripts can tell
    output = result.output
    assert "resumed at layout-001.yaml" in output and "a grey cat" in output
    assert "SEED a whole number" in output and "unknown command /bogus" in output
    assert "no image to edit yet" in output and "even after asking again" in output
    assert "back to the start" in output and "nothing to undo" in output and "no layout yet" in output
    assert sorted(p.name for p in folder.iterdir()) == ["layout-001.preview.png", "layout-001.yaml", "session.json",
                                                         "transcript.jsonl"]


def test_a_folder_that_is_not_a_session_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with serve([]) as server:
        result = _chat(server.url, tmp_path / "busy", tiny_model, ["hello"])
    assert result.exit_code == 1 and "not an eligen chat session" in result.output

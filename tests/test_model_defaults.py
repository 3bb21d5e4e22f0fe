"""A model folder's declared defaults (eligen.json: size, steps, cfg) fill what a layout leaves out, for every
command that renders; the layout's own values win over them and command-line options over both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.layout import DEFAULT_MODEL, parse_layout
from eligen.pipeline.model_defaults import with_model_defaults
from eligen.pipeline.model_info import BUILTIN_MODELS, EXTRA_CONFIG, ModelLoadError, declaration
from eligen.pipeline.outputs import read_png_metadata
from eligen.sources import load_edits, load_source

runner = CliRunner()
CIRCLE = {"prompt": "a red circle", "box": [8, 8, 40, 40]}
# the size and sampling steps the built-in shapes model declares, read from its eligen.json as written
SHAPES_DECLARED = json.loads((BUILTIN_MODELS / "shapes" / EXTRA_CONFIG).read_text())
SHAPES_SIZE, SHAPES_STEPS = tuple(SHAPES_DECLARED["size"]), SHAPES_DECLARED["steps"]


def _layout(folder: Path, name: str = "scene.yaml", **data: object) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"prompt": "a red circle", "entities": [CIRCLE], **data}), encoding="utf-8")
    return path


def test_a_shapes_layout_without_size_renders_at_the_declared_size(tmp_path: Path) -> None:
    width, height = SHAPES_SIZE
    layout = _layout(tmp_path, model="shapes", seed=0)
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["generate", str(layout), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == SHAPES_SIZE
    recorded = read_png_metadata(out)["layout"]
    assert (recorded["size"], recorded["steps"], recorded["cfg"]) == ([width, height], SHAPES_STEPS, 3.0)
    assert f"wrote {out} ({width}x{height}, {SHAPES_STEPS} steps, " in result.output


def test_a_flux_layout_without_size_still_defaults_to_1024(tmp_path: Path) -> None:
    src = load_source(_layout(tmp_path, seed=0), {})  # no model named: FLUX.1-dev, never loaded here
    assert src.layout.model == DEFAULT_MODEL
    assert (src.layout.size, src.layout.steps, src.layout.cfg) == ((1024, 1024), 50, 3.0)
    assert declaration(DEFAULT_MODEL).size is None  # a hub id declares nothing


def test_the_layout_wins_over_the_model_and_the_command_line_over_both(tmp_path: Path) -> None:
    assert SHAPES_SIZE != (160, 96)  # the layout's size is not the model's
    layout = _layout(tmp_path, model="shapes", size=[160, 96], steps=10)
    src = load_source(layout, {})
    assert (src.layout.size, src.layout.steps, src.layout.cfg) == ((160, 96), 10, 3.0)
    src = load_source(layout, {"steps": 5, "cfg": 2.0})
    assert (src.layout.size, src.layout.steps, src.layout.cfg) == ((160, 96), 5, 2.0)
    # --model switches the defaults to the new model's
    plain = _layout(tmp_path, "plain.yaml")
    assert load_source(plain, {"model": "shapes"}).layout.size == SHAPES_SIZE


def test_inpaint_edits_take_steps_and_cfg_from_the_model(tmp_path: Path) -> None:
    Image.new("RGB", (80, 48), (240, 240, 240)).save(tmp_path / "photo.png")
    job = load_edits(tmp_path / "photo.png", _layout(tmp_path, "edits.yaml", model="shapes"), {})
    assert (job.edits.size, job.edits.steps, job.edits.cfg) == ((80, 48), SHAPES_STEPS, 3.0)  # the image's size
    job = load_edits(tmp_path / "photo.png", tmp_path / "edits.yaml", {"steps": 3})
    assert job.edits.steps == 3


def test_eval_and_the_python_api_use_the_model_defaults(tmp_path: Path) -> None:
    (tmp_path / "layouts").mkdir()
    _layout(tmp_path / "layouts", model="shapes")
    result = runner.invoke(app, ["eval", str(tmp_path / "layouts"), "--seeds", "1", "--device", "cpu",
                                 "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    options = json.loads((tmp_path / "eval" / "results.json").read_text())["options"]
    assert (options["model"], options["steps"], options["cfg"], options["size"]) == ("shapes", SHAPES_STEPS, 3.0,
                                                                                      list(SHAPES_SIZE))

    from eligen.pipeline.generate import EligenPipeline

    pipe = EligenPipeline.from_pretrained("shapes", device="cpu")
    (image,) = pipe.generate(parse_layout({"prompt": "a red circle", "steps": 2, "entities": [CIRCLE]}), [0])
    assert image.size == SHAPES_SIZE  # the loaded model's size, though the layout names no model


def test_chat_rendering_uses_the_model_defaults(tmp_path: Path) -> None:
    from eligen.agent.render import Renderer

    out = tmp_path / "chat.png"
    Renderer(device="cpu").generate(parse_layout({"model": "shapes", "prompt": "a red circle", "entities": [CIRCLE]}),
                                    tmp_path, 0, out)
    assert Image.open(out).size == SHAPES_SIZE
    assert read_png_metadata(out)["layout"]["steps"] == SHAPES_STEPS


def test_preview_resolves_the_size_without_torch(tmp_path: Path) -> None:
    layout = _layout(tmp_path, model="shapes")
    script = ("import sys\nfrom typer.testing import CliRunner\nfrom eligen.main import app\n"
              f"r = CliRunner().invoke(app, ['preview', {str(layout)!r}, '-o', {str(tmp_path / 'p.png')!r}])\n"
              "assert r.exit_code == 0, r.output\nassert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    assert Image.open(tmp_path / "p.png").size == (512, 512)  # 128x128 drawn 4x; a 1024 canvas would stay 1024


@pytest.mark.parametrize(("content", "words"), [
    ({"size": [64, 60]}, ("eligen.json: size:", "multiples of 16")),
    ({"steps": 0}, ("eligen.json: steps:", "greater than 0")),
    ({"setps": 24}, ("eligen.json: setps: unknown key", "known keys")),
    ([1, 2], ("eligen.json: (top level): expected a JSON object",)),
])
def test_a_broken_declaration_names_the_file_and_the_key(tmp_path: Path, content: object,
                                                         words: tuple[str, ...]) -> None:
    (tmp_path / "eligen.json").write_text(json.dumps(content))
    with pytest.raises(ModelLoadError) as caught:
        with_model_defaults(parse_layout({"prompt": "x"}), str(tmp_path))
    assert all(word in str(caught.value) for word in words), caught.value


def test_chat_designs_at_the_model_size_and_renders_with_its_steps(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_server import serve

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("ELIGEN_MLLM_URL", raising=False)
    design, edit = (json.dumps({"prompt": p, "entities": [{"prompt": p, "bbox_2d": [0, 0, 500, 500]}]})
                    for p in ("a red circle", "a blue circle"))
    folder = tmp_path / "session"
    with serve([design, edit]) as server:
        result = runner.invoke(app, ["chat", "--session", str(folder), "--model", "shapes", "--device", "cpu",
                                     "--mllm-url", server.url, "--mllm-family", "qwen2-vl", "--mllm-retries", "0"],
                               input="a red circle\n/render\n/edit make it blue\n/quit\n")
    assert result.exit_code == 0, result.output
    layout = yaml.safe_load((folder / "layout-001.yaml").read_text())
    assert layout["size"] == list(SHAPES_SIZE) and "steps" not in layout  # no --size, no --steps: the model's
    assert read_png_metadata(folder / "image-002.png")["layout"]["steps"] == SHAPES_STEPS
    assert Image.open(folder / "image-002.png").size == SHAPES_SIZE
    assert read_png_metadata(folder / "image-003.png")["edits"]["steps"] == SHAPES_STEPS

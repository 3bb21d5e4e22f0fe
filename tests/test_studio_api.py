"""`eligen studio` started with the model-loading options of `eligen generate`, and on a Qwen-Image model: driven
through its JSON API (no browser), each started as a person starts it."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from studio_browser import run_cli, serve
from typer.testing import CliRunner

import eligen.pipeline.shapes as shapes_package
from eligen.main import app
from eligen.pipeline.model_info import default_size
from eligen.pipeline.outputs import read_png_metadata

runner = CliRunner()
SHAPES_TRANSFORMER = (Path(shapes_package.__file__).parent / "builtin-models" / "shapes" / "transformer"
                      / "diffusion_pytorch_model.safetensors")
SCENE = {"prompt": "a red circle and a blue square", "seed": 3, "steps": 3,
         "entities": [{"prompt": "a red circle", "box": [4, 4, 30, 30]},
                      {"prompt": "a blue square", "box": [34, 34, 60, 60]}]}
JOB_TIMEOUT = 120  # s: a few sampling steps of a tiny model on a busy 2-core machine


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def _finished(base: str, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['state']} after {JOB_TIMEOUT} s"
        time.sleep(0.2)
        job = json.loads(_get(f"{base}api/jobs/{job['id']}"))
    return job


def _generate(base: str, layout: dict[str, Any]) -> tuple[bytes, str]:
    """Generate one image through the API: its PNG bytes and its YAML."""
    status, job = _post(f"{base}api/generate", {"mode": "generate", "layout": layout})
    assert status == 200, job
    job = _finished(base, job)
    assert job["state"] == "done", job
    result = job["results"][0]["id"]
    return _get(f"{base}api/results/{result}.png"), _get(f"{base}api/results/{result}.yaml").decode()


def test_help_lists_the_loading_options_of_generate() -> None:
    text = runner.invoke(app, ["studio", "--help"], terminal_width=200).output
    for option in ("--transformer", "--device", "--dtype", "--offload", "--quantize"):
        assert option in text, option
    assert "bf16|fp16|fp32" in text and "none|model|sequential" in text and "none|nf4|int8|fp8" in text


def test_loading_options_are_used_and_recorded_so_generate_repeats_the_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with serve(cwd, "--model", "shapes", "--dtype", "fp32", "--device", "cpu",
               "--transformer", str(SHAPES_TRANSFORMER)) as served:
        png, layout_yaml = _generate(served.url, SCENE)
        status, answer = _post(f"{served.url}api/generate", {"mode": "generate",
                                                             "layout": {**SCENE, "transformer": "/etc/hostname"}})
        assert status == 400 and answer["field"] == "transformer"  # the browser cannot name one
        assert f"transformer: {SHAPES_TRANSFORMER}" in layout_yaml
    assert list(cwd.iterdir()) == []
    assert read_png_metadata(io.BytesIO(png))["layout"]["transformer"] == str(SHAPES_TRANSFORMER)
    assert Image.open(io.BytesIO(png)).size == default_size("shapes")  # a layout without a size gets the model's,
    # as in the CLI
    (tmp_path / "studio.yaml").write_text(layout_yaml)
    monkeypatch.chdir(tmp_path)
    run_cli("generate", "studio.yaml", "-o", "cli.png", "--dtype", "fp32", "--device", "cpu")
    assert (tmp_path / "cli.png").read_bytes() == png  # same weights, dtype and threads: the same bytes


def test_the_studio_runs_a_qwen_image_model_and_says_it_has_no_attention_maps(
        tiny_qwen_model: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with serve(cwd, "--model", str(tiny_qwen_model), "--dtype", "fp32", "--device", "cpu") as served:
        info = json.loads(_get(f"{served.url}api/info"))
        assert info["model"] == str(tiny_qwen_model)
        assert info["no_attention_maps"] == "attention maps are implemented for FLUX models, not yet for qwen-image"
        png, _ = _generate(served.url, {**SCENE, "size": [64, 64], "steps": 2})
        metadata = read_png_metadata(io.BytesIO(png))
        assert metadata["model"] == str(tiny_qwen_model) and metadata["seed"] == 3
        assert Image.open(io.BytesIO(png)).size == (64, 64)

        status, job = _post(f"{served.url}api/generate", {"mode": "generate",
                                                          "layout": {**SCENE, "size": [64, 64], "steps": 2}})
        result = _finished(served.url, job)["results"][0]["id"]
        status, answer = _post(f"{served.url}api/attention", {"result": result})
        assert status == 400 and answer["field"] == "(model)"
        assert answer["message"] == ("attention maps: (model): attention maps are implemented for FLUX models, "
                                     "not yet for qwen-image")
        assert served.process.poll() is None  # still serving
        png_again, _ = _generate(served.url, {**SCENE, "size": [64, 64], "steps": 2})
        assert png_again == png  # and still generating, deterministically
    assert list(cwd.iterdir()) == []


def test_a_start_up_name_that_is_neither_a_file_nor_a_hub_name_is_exit_2(tmp_path: Path) -> None:
    for option, value in (("--allow-file", "/nonexistent/x.bin"), ("--lora", "../nowhere")):
        result = runner.invoke(app, ["studio", "--model", "shapes", option, value])
        assert result.exit_code == 2, result.output
        assert f"{option}: {value}: expected an existing file or folder, or a hub name" in result.output


def test_a_layout_opened_on_the_command_line_lends_its_files_to_the_page(tmp_path: Path) -> None:
    from eligen.pipeline.layout import parse_layout
    from eligen.studio.paths import names_in

    (tmp_path / "style.safetensors").write_bytes(b"")
    (tmp_path / "ref.png").write_bytes(b"")
    layout = parse_layout({"prompt": "a red circle", "loras": [{"path": "style.safetensors"},
                                                                 {"path": "someone/loras", "file": "x.safetensors"}],
                           "ip_adapter": {"path": "someone/adapters/ip.bin"},
                           "entities": [{"prompt": "a red circle", "box": [0, 0, 8, 8],
                                         "reference": {"image": "ref.png"}}]})
    names = names_in(layout, tmp_path)
    assert names.loras == (str(tmp_path / "style.safetensors"), "someone/loras/x.safetensors")
    assert names.files == ("someone/adapters/ip.bin", str(tmp_path / "ref.png"))


def test_the_models_own_lora_is_allowed_so_its_results_restore() -> None:
    from eligen.studio.paths import Allowed, checked_paths, model_loras

    flux = "black-forest-labs/FLUX.1-dev"
    assert model_loras(flux) == ("modelscope/EliGen/model_bf16.safetensors",) and model_loras("shapes") == ()
    resolved = {"prompt": "a cat", "loras": [{"path": "modelscope/EliGen", "file": "model_bf16.safetensors"}]}
    data = checked_paths(resolved, Allowed(model_loras(flux)), flux, None, "result.png")  # as a result's PNG has it
    assert data["loras"] == resolved["loras"]

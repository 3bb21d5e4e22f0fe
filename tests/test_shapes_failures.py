"""scripts/shapes_failures.py: the sheet of the entities a shapes evaluation got wrong, on a hand-made run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from eligen.pipeline.shapes.scenes import Scene, Shape, render

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "shapes_failures.py"
TILE = 96


def fake_run(tmp_path: Path) -> Path:
    """An eval folder of one 64x64 layout (`layouts/scene 1.yaml`), seed 0: "a red square" drawn as a circle (a
    failure), "a blue circle" drawn right; its results.json names the layout file by a path relative to `tmp_path`."""
    layouts, out = tmp_path / "layouts", tmp_path / "eval"
    layouts.mkdir()
    (out / "images").mkdir(parents=True)
    (layouts / "scene 1.yaml").write_text(
        "size: [64, 64]\nprompt: a red square and a blue circle\nentities:\n"
        "  - {prompt: a red square, box: [4, 4, 28, 28]}\n  - {prompt: a blue circle, box: [36, 30, 60, 54]}\n")
    scene = Scene(64, (240, 240, 236), (Shape("circle", "red", (4, 4, 28, 28)),
                                        Shape("circle", "blue", (36, 30, 60, 54))))
    render(scene).save(out / "images" / "s0_scene_1.png")  # `eligen eval` ids the file "scene_1"
    results = {"benchmark": {"kind": "layouts", "files": ["layouts/scene 1.yaml"]},
               "per_image": [{"item": "scene_1", "seed": 0, "instances": [
                   {"prompt": "a red square", "success": False, "found_shape": "circle", "iou": 1.0},
                   {"prompt": "a blue circle", "success": True, "found_shape": "circle", "iou": 1.0}]}]}
    (out / "results.json").write_text(json.dumps(results))
    return out


def script(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_sheet_shows_each_failed_entity_with_the_detectors_view(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    done = script(run, "-o", "sheet.png", "--json", "failed.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "failed.json").read_text())
    assert [(r["prompt"], r["box"], r["found_shape"]) for r in rows] == [("a red square", [4, 4, 28, 28], "circle")]
    assert 0.64 <= rows[0]["fill"] < 0.89  # a drawn disc: about pi / 4 of its box
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size == (TILE, 2 * TILE + 4)  # one column: the crop over the detected pixels
    # the lower half shows the detected disc: white at its centre, black in its box's corner
    assert sheet.getpixel((TILE // 2, TILE + 4 + TILE // 2)) == (255, 255, 255)
    margin = 24 // 4
    corner = (round((margin + 1) * TILE / (24 + 2 * margin)), TILE + 4 + round((margin + 1) * TILE / (24 + 2 * margin)))
    assert sheet.getpixel(corner) == (0, 0, 0)


def test_refuses_to_overwrite_and_reports_no_failures(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    (tmp_path / "sheet.png").write_bytes(b"keep me")
    done = script(run, "-o", "sheet.png", cwd=tmp_path)
    assert done.returncode != 0 and "sheet.png exists" in done.stderr
    assert (tmp_path / "sheet.png").read_bytes() == b"keep me"
    done = script(run, "-o", "tri.png", "--shape", "triangle", cwd=tmp_path)
    assert done.returncode != 0 and "no failed entities of shape triangle" in done.stderr
    assert not (tmp_path / "tri.png").exists()
    done = script(run, "-o", "other.png", cwd=tmp_path / "layouts")  # the layout path is relative to tmp_path
    assert done.returncode != 0 and "give --base" in done.stderr
    assert script(run, "-o", "other.png", "--base", tmp_path, cwd=tmp_path / "layouts").returncode == 0

"""`eligen eval` as a benchmark runner: COCO-MIG's files as items, shards, resuming, score-only, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.bench.coco_mig import read_coco_mig, split_phrase
from eligen.pipeline.bench.items import BenchItem, Instance
from eligen.pipeline.bench.layout_items import item_ids
from eligen.pipeline.bench.report import means
from eligen.pipeline.bench.run import Shard, generate_shard, image_path, score_shard
from eligen.pipeline.bench.scoring import ImageScore
from eligen.pipeline.bench.shapes_scorer import ShapesScorer
from eligen.pipeline.layout import LayoutError, parse_layout
from eligen.pipeline.shapes.evaluation import score_image
from eligen.pipeline.shapes.scenes import render, scenes, write_shapes_dataset

runner = CliRunner()

ANNOTATION = {  # COCO-MIG's format (MIGC bench_file/mig_bench_anno.yaml): phrases -> boxes as fractions
    "a photo of a red apple and a blue cup": {
        "a red apple": [[0.1, 0.1, 0.4, 0.5]], "a blue cup": [[0.5, 0.5, 0.9, 0.9]], "coco_id": "12"},
    "a photo of a green bird and a green bird and a white bus": {
        "a green bird": [[0.0, 0.0, 0.3, 0.3], [0.6, 0.0, 1.0, 0.3]], "a white bus": [[0.1, 0.5, 0.9, 1.0]],
        "coco_id": "7"},
}


def write_coco_mig(folder: Path, order: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mig_bench_anno.yaml").write_text(yaml.safe_dump(ANNOTATION), encoding="utf-8")
    (folder / "mig_bench.txt").write_text("\n".join(order or list(ANNOTATION)[::-1]) + "\n", encoding="utf-8")
    return folder


def test_coco_mig_items_follow_the_prompts_file(tmp_path: Path) -> None:
    items = read_coco_mig(write_coco_mig(tmp_path / "mig"), {"model": "shapes", "size": [64, 64]})
    assert [i.layout.prompt for i in items] == list(ANNOTATION)[::-1]
    assert [i.level for i in items] == ["L3", "L2"] and [i.id for i in items] == ["7", "12"]  # the coco_id
    birds = items[0]
    assert [e.prompt for e in birds.layout.entities] == ["a green bird", "a green bird", "a white bus"]
    assert birds.layout.units == "fraction" and birds.layout.size == (64, 64)
    assert birds.instances[1].box == pytest.approx((0.6 * 64, 0.0, 64.0, 0.3 * 64))  # fractions to pixels
    assert (birds.instances[2].colour, birds.instances[2].category) == ("white", "bus")
    assert split_phrase("a brown teddy bear") == ("brown", "teddy bear") and split_phrase("a cat") == (None, "cat")
    assert items[1].layout.steps == 24  # what the overrides leave out comes from the model (shapes: 24 steps)


def test_mig_bench_json_gives_the_same_items(tmp_path: Path) -> None:
    """MIG_Bench's sample_prompt_color_split.json (labels without the article) reads as the same scenes."""
    split = {key: {"caption": prompt, "segment": [{"label": phrase.removeprefix("a "), "bbox": box}
                                                  for phrase, boxes in entry.items() if phrase != "coco_id"
                                                  for box in boxes]}
             for prompt, entry in ANNOTATION.items() for key in [entry["coco_id"]]}
    (tmp_path / "sample_prompt_color_split.json").write_text(json.dumps(split), encoding="utf-8")
    items = read_coco_mig(tmp_path, {"model": "shapes"})
    from_yaml = read_coco_mig(write_coco_mig(tmp_path / "mig", list(ANNOTATION)), {"model": "shapes"})
    assert [i.id for i in items] == [i.id for i in from_yaml] == ["12", "7"]
    def scene(item: BenchItem) -> list[tuple]:  # the YAML file lists phrases sorted, the JSON in its own order
        return sorted((x.box, x.colour, x.category) for x in item.instances)

    assert [scene(i) for i in items] == [scene(i) for i in from_yaml] and len(scene(items[1])) == 3
    assert items[0].layout.entities[0].prompt == "red apple"  # the label as the benchmark writes it
    del split["7"]["segment"][0]["bbox"]
    (tmp_path / "sample_prompt_color_split.json").write_text(json.dumps(split), encoding="utf-8")
    with pytest.raises(LayoutError, match=r"7.segment\[0\].bbox: expected a box of 4 fractions"):
        read_coco_mig(tmp_path)


def test_coco_mig_errors_name_the_file_and_the_entry(tmp_path: Path) -> None:
    folder = write_coco_mig(tmp_path / "mig", ["a photo of nothing known"])
    with pytest.raises(LayoutError, match=r"mig_bench.txt: line 1: expected a prompt of mig_bench_anno.yaml"):
        read_coco_mig(folder)
    (folder / "mig_bench.txt").unlink()
    bad = {"a photo of a red cat": {"a red cat": [[0.5, 0.1, 0.2, 0.4]]}}
    (folder / "mig_bench_anno.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(LayoutError, match=r"a red cat\[0\]: expected a box of 4 fractions x0 < x1"):
        read_coco_mig(folder)


def test_shards_split_the_work_without_overlap() -> None:
    items = [BenchItem(str(i), "L2", parse_layout({"prompt": "p"}), ()) for i in range(5)]
    parts = [Shard(i, 3).pairs(items, [0, 1]) for i in range(3)]
    every = [(item.id, seed) for part in parts for item, seed in part]
    assert sorted(every) == sorted((item.id, seed) for item in items for seed in (0, 1)) and len(every) == 10


def test_a_killed_generation_resumes_without_regenerating(tmp_path: Path) -> None:
    layout = parse_layout({"prompt": "a red circle", "size": [64, 64]})
    items = [BenchItem(f"i{i}", "L1", layout, (Instance("a red circle", (0.0, 0.0, 32.0, 32.0)),)) for i in range(3)]
    calls: list[tuple[str, int]] = []

    def render_until(limit: int):
        def render_one(item: BenchItem, seed: int) -> tuple[Image.Image, dict]:
            if len(calls) == limit:
                raise KeyboardInterrupt  # the run is killed here
            calls.append((item.id, seed))
            return Image.new("RGB", (64, 64), (245, 245, 245)), {"seed": seed}
        return render_one

    with pytest.raises(KeyboardInterrupt):
        generate_shard(items, [0, 1], tmp_path, render_until(4), Shard())
    done = sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    assert len(done) == 4 and not list((tmp_path / "images").glob(".*"))  # no half-written file is left
    stats = generate_shard(items, [0, 1], tmp_path, render_until(100), Shard())
    assert (stats.done, stats.skipped) == (2, 4) and calls[4:] == [("i2", 0), ("i2", 1)]

    class Counting(ShapesScorer):
        scored = 0

        def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
            Counting.scored += 1
            return super().score(image, item)

    assert score_shard(items, [0, 1], tmp_path, [Counting()], Shard()).done == 6
    assert score_shard(items, [0, 1], tmp_path, [Counting()], Shard()).skipped == 6 and Counting.scored == 6
    image_path(tmp_path, items[0], 0).unlink()
    (tmp_path / "scores" / "s0_i0.json").unlink()
    with pytest.raises(FileNotFoundError, match="expected 1 more generated images to score"):
        score_shard(items, [0, 1], tmp_path, [Counting()], Shard())


def test_means_leave_out_none_and_strings() -> None:
    rows = [{"iou": 0.5, "success": True, "found_shape": "circle", "mask_iou": None},
            {"iou": 0.25, "success": False, "found_shape": None, "mask_iou": 0.5}]
    assert means(rows) == {"iou": 0.375, "success": 0.5, "mask_iou": 0.5}


def test_the_shapes_scorer_scores_as_the_shapes_evaluation(tmp_path: Path) -> None:
    """The benchmark's shapes scorer gives the detector's own scores (docs/shapes.md's numbers stay)."""
    for scene in scenes(12, seed=5):
        image = render(scene)
        entities = [{"prompt": s.prompt, "box": list(s.box)} for s in scene.shapes]
        layout = parse_layout({"prompt": scene.caption, "size": [scene.size, scene.size], "entities": entities})
        item = BenchItem("x", "L", layout, tuple(Instance(e["prompt"], tuple(map(float, e["box"])))
                                                 for e in entities))
        expected = score_image(image, layout)
        got = ShapesScorer().score(image, item).instances
        assert [r["iou"] for r in got] == [e.iou for e in expected]
        assert [r["success"] for r in got] == [e.success for e in expected]


def test_item_ids_are_unique_and_file_safe() -> None:
    paths = [Path("a/x.yaml"), Path("b/x.yaml"), Path("c/my scene.yaml")]
    assert item_ids(paths) == ["a-x", "b-x", "my_scene"]


def _layouts(tmp_path: Path, n: int = 3) -> Path:
    write_shapes_dataset(tmp_path / "d", n, seed=0, counts=(2,), layouts=tmp_path / "layouts")
    return tmp_path / "layouts"


def _per_image(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["per_image"]


def test_eval_resumes_refuses_other_options_and_scores_only(tiny_model: Path, tmp_path: Path) -> None:
    layouts, out = _layouts(tmp_path), tmp_path / "out"
    base = ["eval", str(layouts), "--model", str(tiny_model), "--seeds", "2", "--steps", "2", "--device", "cpu",
            "-o", str(out)]
    first = runner.invoke(app, base)
    assert first.exit_code == 0, first.output
    pngs = {p: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    assert len(pngs) == 6 and "generated 6 images" in first.output
    meta = json.loads(Image.open(next(iter(pngs))).text["eligen"])
    assert {"eligen_version", "model", "seed", "layout", "benchmark_item"} <= meta.keys()

    again = runner.invoke(app, base)
    assert again.exit_code == 0 and "generated 0 images" in again.output and "6 already there" in again.output
    assert {p: p.stat().st_mtime_ns for p in pngs} == pngs and _per_image(out) == json.loads(
        (out / "results.json").read_text())["per_image"]

    other = runner.invoke(app, [*base[:-2], "--cfg", "2", "-o", str(out)])
    assert other.exit_code == 1 and "holds a run with other options (cfg: 3.0 there, 2.0 now)" in other.output

    for file in (out / "scores").glob("*.json"):
        file.unlink()
    before = _per_image(out)
    scored = runner.invoke(app, [*base, "--score-only"])
    assert scored.exit_code == 0, scored.output
    assert _per_image(out) == before  # the same images score the same, whenever and wherever they are scored

    empty = runner.invoke(app, [*base[:-1], str(tmp_path / "none"), "--score-only"])
    assert empty.exit_code == 1 and "holds no run" in empty.output


def test_eval_runs_coco_mig_end_to_end_with_every_scorer(tiny_model: Path, tmp_path: Path) -> None:
    """COCO-MIG's files on the tiny FLUX model, scored by tiny random GroundingDINO + SAM, CLIP and the MLLM judge
    (a scripted server): the mechanics, not the numbers. With --limit 1, the first prompt only (3 instances)."""
    from chat_server import serve

    from eligen.pipeline.bench.tiny_scorers import write_tiny_scorers

    scorers = write_tiny_scorers(tmp_path / "scorers")
    folder, out = write_coco_mig(tmp_path / "mig"), tmp_path / "out"
    verdict = json.dumps({"correct": True, "reason": "a green bird"})
    with serve([verdict] * 3) as server:
        result = runner.invoke(app, [
            "eval", str(folder), "--model", str(tiny_model), "--seeds", "1", "--steps", "2", "--size", "64x64",
            "--limit", "1", "--device", "cpu", "-o", str(out), "--scorer", "auto", "--scorer", "judge",
            "--detector-model", str(scorers["grounding-dino"]), "--sam-model", str(scorers["sam"]),
            "--clip-model", str(scorers["clip"]), "--mllm-url", server.url, "--mllm-model", "judge-model"])
    assert result.exit_code == 0, result.output
    assert "best IoU" in result.output and "MLLM success" in result.output
    report = json.loads((out / "results.json").read_text())
    assert report["benchmark"]["kind"] == "coco-mig" and len(report["benchmark"]["sha256"]) == 64
    assert [s["name"] for s in report["scorers"]] == ["coco-mig", "clip", "mllm-judge"]
    assert list(report["levels"]) == ["L3", "all"] and report["levels"]["all"]["instances"] == 3
    assert report["options"]["size"] == [64, 64] and report["options"]["limit"] == 1
    (image,) = report["per_image"]
    assert {"miou", "success", "colour_ok", "clip_entity", "judge_correct"} <= image["instances"][0].keys()
    assert {"image_success", "clip_global"} <= image["image"].keys()
    assert [i["judge_correct"] for i in image["instances"]] == [True] * 3
    assert report["levels"]["all"]["instance_means"]["judge_correct"] == 1.0
    assert Image.open(out / "contact.png").size == (8 * 192, 192)


def test_a_scorer_model_that_cannot_load_keeps_the_images(tiny_model: Path, tmp_path: Path) -> None:
    layouts, out = _layouts(tmp_path, 1), tmp_path / "out"
    base = ["eval", str(layouts), "--model", str(tiny_model), "--seeds", "1", "--steps", "2", "--device", "cpu",
            "-o", str(out), "--scorer", "clip", "--clip-model"]
    missing = runner.invoke(app, [*base, str(tmp_path / "no-such-clip")])
    assert missing.exit_code == 2 and "no-such-clip does not exist" in missing.output and not out.exists()
    (tmp_path / "empty-clip").mkdir()
    empty = runner.invoke(app, [*base, str(tmp_path / "empty-clip")])
    assert empty.exit_code == 1 and "a scorer could not load its model" in empty.output
    assert "run the same command with --score-only" in empty.output and len(list((out / "images").glob("*.png"))) == 1


def test_two_processes_score_what_one_does(tiny_model: Path, tmp_path: Path) -> None:
    layouts = _layouts(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread in every process: the same arithmetic
    common = [sys.executable, "-m", "eligen", "eval", str(layouts), "--model", str(tiny_model), "--seeds", "2",
              "--steps", "2", "--device", "cpu"]
    for name, extra in (("one", []), ("two", ["--num-processes", "2"])):
        done = subprocess.run([*common, "-o", str(tmp_path / name), *extra], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "process 2/2" in done.stderr
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert _per_image(tmp_path / "one") == two["per_image"] and two["processes"] == 2
    assert sorted(p["process"] for p in two["throughput"] if p["stage"] == "generate") == [0, 1]

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
from eligen.pipeline.bench.report import Report, ScoredImage, contact_sheet, means, overlay
from eligen.pipeline.bench.run import Shard, generate_shard, image_path, score_shard
from eligen.pipeline.bench.scoring import ImageScore
from eligen.pipeline.bench.shapes_scorer import ShapesScorer
from eligen.pipeline.layout import LayoutError, parse_layout
from eligen.pipeline.model_info import declaration
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
    assert items[1].layout.steps == declaration("shapes").steps  # what the overrides leave out: the model's


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


def test_contact_sheet_cells_are_the_overlays_at_the_given_size(tmp_path: Path) -> None:
    """`contact_sheet(..., cell=N)`: `columns` cells a row, each the image with its layout drawn over it, N px."""
    images = []
    for i, scene in enumerate(scenes(3, seed=5)):
        entities = [{"prompt": s.prompt, "box": list(s.box)} for s in scene.shapes]
        layout = parse_layout({"model": "shapes", "prompt": scene.caption, "size": [scene.size, scene.size],
                               "entities": entities})
        item = BenchItem(f"i{i}", "L", layout, tuple(Instance(e["prompt"], tuple(map(float, e["box"])))
                                                     for e in entities))
        image_path(tmp_path, item, 0).parent.mkdir(exist_ok=True)
        render(scene).save(image_path(tmp_path, item, 0))
        images.append(ScoredImage(item, 0, [], {}))
    sheet = contact_sheet(Report(images), tmp_path, columns=2, cell=100)
    assert sheet.size == (200, 200)
    last = overlay(render(scenes(3, seed=5)[2]), images[2].item).convert("RGB").resize((100, 100))
    assert sheet.crop((0, 100, 100, 200)).tobytes() == last.tobytes()  # the third image: second row, first cell
    assert sheet.crop((100, 100, 200, 200)).getextrema() == ((255, 255),) * 3  # no fourth image: blank


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
                              text=True, timeout=900)  # a guard: minutes on a loaded machine
        assert done.returncode == 0, done.stderr[-3000:]
    assert "process 2/2" in done.stderr
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert _per_image(tmp_path / "one") == two["per_image"] and two["processes"] == 2
    assert sorted(p["process"] for p in two["throughput"] if p["stage"] == "generate") == [0, 1]


# --- malformed COCO-MIG files: exit 2 naming the file and the entry, nothing written ---------------------------------

DEEP = "[" * 5000 + "]" * 5000  # nesting beyond Python's recursion limit in either parser


def _split(entries: dict[str, list[str]]) -> str:
    """MIG_Bench's JSON text: per id a caption and one instance per label (any box)."""
    return json.dumps({key: {"caption": f"a photo of {' and '.join(labels)}",
                             "segment": [{"label": label, "bbox": [0.1, 0.1, 0.5, 0.5]} for label in labels]}
                       for key, labels in entries.items()})


def _annotation(entries: dict[str, tuple[object, list[str]]]) -> str:
    """MIGC's annotation YAML: per prompt its coco_id and one box per phrase."""
    return yaml.safe_dump({prompt: {**{phrase: [[0.1, 0.1, 0.5, 0.5]] for phrase in phrases}, "coco_id": coco_id}
                           for prompt, (coco_id, phrases) in entries.items()})


YAML_FILE, JSON_FILE, PROMPTS_FILE = "mig_bench_anno.yaml", "sample_prompt_color_split.json", "mig_bench.txt"
MALFORMED_BENCHMARKS = {  # id: ({file: text}, the file the message names, words it must contain)
    "yaml_nested_5000_deep": ({YAML_FILE: f"a: {DEEP}\n"}, YAML_FILE, ["nested", "recursion limit"]),
    "json_nested_5000_deep": ({JSON_FILE: f'{{"1": {DEEP}}}'}, JSON_FILE, ["nested", "recursion limit"]),
    "empty_prompts_file": ({YAML_FILE: _annotation({"p": (1, ["a red car"])}), PROMPTS_FILE: "\n \n"},
                           PROMPTS_FILE, ["the file has none"]),
    "yaml_id_a_list": ({YAML_FILE: _annotation({"p": ([12], ["a red car"])})}, YAML_FILE,
                       ["p: coco_id", "non-negative integer id", "[12]"]),
    "yaml_id_a_mapping": ({YAML_FILE: _annotation({"p": ({"a": 1}, ["a red car"])})}, YAML_FILE,
                          ["p: coco_id", "non-negative integer id"]),
    "yaml_id_a_float": ({YAML_FILE: _annotation({"p": (7.5, ["a red car"])})}, YAML_FILE, ["7.5"]),
    "yaml_id_negative": ({YAML_FILE: _annotation({"p": (-12, ["a red car"])})}, YAML_FILE, ["-12"]),
    "yaml_id_a_bool": ({YAML_FILE: _annotation({"p": (True, ["a red car"])})}, YAML_FILE, ["True"]),
    "yaml_id_twice": ({YAML_FILE: _annotation({"p": (4, ["a red car"]), "q": ("4", ["a blue bus"])})}, YAML_FILE,
                      ["q: coco_id", "unique", "'p'"]),
    "json_id_with_a_space": ({JSON_FILE: _split({"4 7": ["red car"], "4-7": ["blue bus"]})}, JSON_FILE,
                             ["4 7 (id)", "non-negative integer id"]),
    "json_id_a_float": ({JSON_FILE: _split({"7.5": ["red car"]})}, JSON_FILE, ["'7.5'"]),
    "json_id_twice": ({JSON_FILE: _split({"4": ["red car"]})[:-1] + ', "4": {"caption": "c", "segment": []}}'},
                      JSON_FILE, ["'4' is given twice"]),
    "yaml_colour_not_defined": ({YAML_FILE: _annotation({"p": (1, ["a purple kite"])})}, YAML_FILE,
                                ["p: a purple kite", "red, yellow, green, blue, white, black, brown"]),
    "yaml_no_colour": ({YAML_FILE: _annotation({"p": (1, ["a kite"])})}, YAML_FILE, ["p: a kite", "colours"]),
    "json_colour_not_defined": ({JSON_FILE: _split({"3": ["red car", "purple kite"]})}, JSON_FILE,
                                ["3.segment[1].label", "'purple kite'", "brown"]),
    "json_colour_alone": ({JSON_FILE: _split({"3": ["red"]})}, JSON_FILE, ["3.segment[0].label", "'red'"]),
}


@pytest.mark.parametrize("case", list(MALFORMED_BENCHMARKS))
def test_malformed_coco_mig_file_is_refused(case: str, tmp_path: Path) -> None:
    files, named, words = MALFORMED_BENCHMARKS[case]
    folder = tmp_path / "mig"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["eval", str(folder), "--model", "shapes", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.split())  # the message as one line, whatever the terminal's wrapping
    assert message.startswith(f"error: {folder / named}: ") and "Traceback" not in message, message
    assert all(word in message for word in words), message
    assert not (tmp_path / "out").exists()


def test_coco_mig_ids_are_kept_as_the_benchmark_writes_them(tmp_path: Path) -> None:
    """Integers and digit strings (the benchmark's own 0-799) are ids as written; no coco_id: the item's place."""
    (tmp_path / YAML_FILE).write_text(_annotation({"p": (0, ["a red car"]), "q": ("007", ["a blue bus"])}))
    assert [i.id for i in read_coco_mig(tmp_path, {"model": "shapes"})] == ["0", "007"]
    (tmp_path / YAML_FILE).write_text(yaml.safe_dump({"p": {"a red car": [[0.1, 0.1, 0.5, 0.5]]},
                                                      "q": {"a blue bus": [[0.1, 0.1, 0.5, 0.5]]}}))
    assert [i.id for i in read_coco_mig(tmp_path, {"model": "shapes"})] == ["0", "1"]


@pytest.mark.parametrize(("value", "words"), [
    ("scorers/no-such/clip", ["--clip-model", "scorers/no-such/clip does not exist"]),
    ("no-such-clip", ["--clip-model", "no-such-clip does not exist"]),
    ("a-file", ["--clip-model", "a-file is a file"]),
    ("org/not-cached", ["--clip-model", "org/not-cached is not in the local Hugging Face cache (HF_HUB_OFFLINE"]),
])
def test_scorer_models_are_checked_before_any_work(value: str, words: list[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path, a file or a hub id that cannot load is exit 2 before the first image is generated."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    (tmp_path / "a-file").write_text("not a model")
    folder = write_coco_mig(tmp_path / "mig")
    result = runner.invoke(app, ["eval", str(folder), "--model", "shapes", "--scorer", "clip", "--clip-model", value,
                                 "-o", str(tmp_path / "out")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and all(word in message for word in words), result.output
    assert "Traceback" not in message and not (tmp_path / "out").exists()


def test_num_processes_checks_the_inputs_once_before_launching(tmp_path: Path) -> None:
    """A bad benchmark with --num-processes 3: one message, exit 2, no process launched."""
    folder = tmp_path / "mig"
    folder.mkdir()
    (folder / YAML_FILE).write_text(_annotation({"p": (1, ["a purple kite"])}))
    result = runner.invoke(app, ["eval", str(folder), "--model", "shapes", "--num-processes", "3",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.output.count("error:") == 1 and "a purple kite" in result.output
    assert "process failed" not in result.output and not (tmp_path / "out").exists()

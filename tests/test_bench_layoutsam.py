"""LayoutSAM-Eval in `eligen eval`: its parquet files, the protocol's crops and aggregation, the VLM questions against
a scripted chat server on 127.0.0.1, hostile answers, malformed files, and a run end to end on the tiny FLUX."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chat_server import Reply, serve
from PIL import Image
from typer.testing import CliRunner

from eligen.agent.config import MllmSettings
from eligen.agent.errors import AnswerError
from eligen.agent.layoutsam_judge import LayoutSamJudge, make_layoutsam_judge, parse_yes_no, questions
from eligen.main import app
from eligen.pipeline.bench.items import BenchItem
from eligen.pipeline.bench.layoutsam import DATASET_ID, is_layoutsam, literal_list, read_layoutsam
from eligen.pipeline.bench.layoutsam_protocol import aggregate, crop_rect, protocol_image, region_crops
from eligen.pipeline.layout import LayoutError

runner = CliRunner()


def _source_image() -> dict[str, Any]:
    """The dataset's `image` column as the Hugging Face `Image` feature stores it (bytes and path)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 30)).save(buffer, format="JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


ROWS = [  # LayoutSAM-Eval's columns; the list columns are Python literals in strings, as published
    {"image_id": 1042, "global_caption": "A red ball on green grass under a blue sky.",
     "region_captions": "['red ball', 'blue sky']",
     "detail_region_captions": "['a shiny red ball with a white stripe', 'a clear blue sky']",
     "bbox_list": "[[40, 150, 160, 280], [0, 0, 400, 100]]", "width": 400, "height": 300,
     "file_name": "sa_1042.jpg"},
    {"image_id": 7, "global_caption": "A wooden chair in an empty room.", "region_captions": "['wooden/oak chair']",
     "detail_region_captions": "['a brown wooden chair with four legs']", "bbox_list": "[[100.5, 50.25, 300, 290]]",
     "width": 320, "height": 320, "file_name": "sa_7.jpg"},
]


def write_layoutsam(path: Path, rows: list[dict[str, Any]], drop: str | None = None) -> Path:
    """A LayoutSAM-Eval parquet file of `rows` (without the column `drop`)."""
    columns: dict[str, list[Any]] = {"image": [_source_image() for _ in rows]}
    for key in ROWS[0]:
        if key != drop:
            columns[key] = [row.get(key) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _bench(tmp_path: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    folder = tmp_path / "LayoutSAM-eval" / "data"
    write_layoutsam(folder / "test-00000-of-00002.parquet", (rows or ROWS)[:1])
    write_layoutsam(folder / "test-00001-of-00002.parquet", (rows or ROWS)[1:])
    return folder.parent


def test_rows_become_items_with_the_benchmarks_ids_and_boxes(tmp_path: Path) -> None:
    folder = _bench(tmp_path)
    bench = read_layoutsam(folder, {"model": "shapes", "size": [64, 64]})
    assert [i.id for i in bench.items] == ["1042", "7"]
    assert bench.file_names == {"1042": "sa_1042.jpg", "7": "sa_7.jpg"}
    assert [p.name for p in bench.files] == ["test-00000-of-00002.parquet", "test-00001-of-00002.parquet"]
    ball = bench.items[0]
    assert ball.layout.prompt == ROWS[0]["global_caption"] and ball.layout.units == "fraction"
    # boxes divided by the source size and rounded to 3 decimals, as the benchmark's dataset class does
    assert [e.box for e in ball.layout.entities] == [(0.1, 0.5, 0.4, 0.933), (0.0, 0.0, 1.0, 0.333)]
    assert [e.prompt for e in ball.layout.entities] == ["a shiny red ball with a white stripe", "a clear blue sky"]
    assert [i.category for i in ball.instances] == ["red ball", "blue sky"]
    assert ball.instances[0].box == pytest.approx((6.4, 32.0, 25.6, 0.933 * 64))
    assert bench.items[1].layout.entities[0].box == (0.314, 0.157, 0.938, 0.906)  # 100.5/320 = 0.3140625
    assert bench.items[0].level == bench.items[1].level
    assert is_layoutsam(folder) and is_layoutsam(bench.files[0]) and is_layoutsam(Path(DATASET_ID))
    assert not is_layoutsam(tmp_path / "elsewhere")


def test_the_datasets_librarys_arrow_files_read_as_the_parquet_files(tmp_path: Path) -> None:
    """`datasets` keeps (and save_to_disk writes) Arrow stream files: the same rows, the same items."""
    parquet = read_layoutsam(_bench(tmp_path / "p"), {"model": "shapes"})
    table = pq.read_table(write_layoutsam(tmp_path / "one.parquet", ROWS))
    folder = tmp_path / "saved"
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(
            sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1)  # one row a batch, as datasets writes in batches
    arrow = read_layoutsam(folder, {"model": "shapes"})
    assert [i.id for i in arrow.items] == [i.id for i in parquet.items]
    assert [i.layout for i in arrow.items] == [i.layout for i in parquet.items]
    assert [i.instances for i in arrow.items] == [i.instances for i in parquet.items]
    assert is_layoutsam(folder) and arrow.file_names == parquet.file_names


def test_list_literals_are_parsed_without_evaluation() -> None:
    assert literal_list("['a', \"b\"]", 1, "f", "x") == ["a", "b"]
    assert literal_list("[[1, 2.5, 3, 4]]", 2, "f", "x") == [[1, 2.5, 3, 4]]
    for text, problem in (("__import__('os').getcwd()", "a call where a list belongs"),
                          ("[[['a']]]", "a list where a plain value belongs"),
                          ("['a', b]", "a name where a plain value belongs"),
                          ("[" * 5000 + "]" * 5000, "does not parse"),
                          ("['a'", "does not parse")):
        with pytest.raises(LayoutError, match=problem):
            literal_list(text, 1, "f", "x")


def _broken(**change: Any) -> list[dict[str, Any]]:
    return [{**ROWS[0], **change}, ROWS[1]]


@pytest.mark.parametrize(("rows", "drop", "message"), [
    (ROWS, "bbox_list", r"test-00000-of-00002.parquet: bbox_list: expected LayoutSAM-Eval's columns"),
    (_broken(global_caption=None), None, r"row 0 \(image_id 1042\).global_caption: expected a non-empty string"),
    (_broken(bbox_list="[[40, 150, 160, 280], [0, 0, 401, 100]]"), None,
     r"row 0 \(image_id 1042\).bbox_list\[1\]: expected a box inside the 400x300 image"),
    (_broken(bbox_list="[[40, 150, 160, 280], [0, 0, 400]]"), None, r"bbox_list\[1\]: expected \[x1, y1, x2, y2\]"),
    (_broken(image_id=7), None, r"test-00001-of-00002.parquet: row 0.image_id: expected unique ids, 7 is also "
                                r"test-00000-of-00002.parquet row 0"),
    (_broken(file_name="sa_7.jpg"), None, r"row 0.file_name: expected unique file names"),
    (_broken(file_name="../escape.jpg"), None, r"file_name: expected a plain file name"),
    (_broken(region_captions="[[[[[['deep']]]]]]"), None,
     r"region_captions: expected a list literal like \['a cat', 'a dog'\], found a list where a plain value"),
    (_broken(detail_region_captions="[" * 300 + "]" * 300), None, r"detail_region_captions: .*does not parse"),
    (_broken(region_captions="['red ball']"), None, r"row 0 \(image_id 1042\): expected as many region_captions"),
])
def test_malformed_files_exit_2_naming_the_entry_before_any_image(tmp_path: Path, rows: list[dict[str, Any]],
                                                                   drop: str | None, message: str) -> None:
    folder = tmp_path / "bench"
    write_layoutsam(folder / "test-00000-of-00002.parquet", rows[:1], drop)
    write_layoutsam(folder / "test-00001-of-00002.parquet", rows[1:])
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", str(folder), "--model", "shapes", "-o", str(out), "--scorer", "clip"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not out.exists()  # nothing generated, nothing written


def test_a_file_that_is_not_parquet_exits_2(tmp_path: Path) -> None:
    (tmp_path / "test-0.parquet").write_bytes(b"not a parquet file")
    result = runner.invoke(app, ["eval", str(tmp_path / "test-0.parquet"), "--model", "shapes", "--scorer", "clip"])
    assert result.exit_code == 2 and "expected a readable parquet file" in result.output


def test_the_protocols_crop_and_encoding() -> None:
    # int(fraction x side) for each coordinate: 0.1*512 = 51.2 -> 51, 0.933*512 = 477.696 -> 477
    assert crop_rect((512, 512), (0.1, 0.5, 0.4, 0.933)) == (51, 256, 204, 477)
    assert crop_rect((1024, 512), (0.314, 0.157, 0.938, 0.906)) == (321, 80, 960, 463)
    with pytest.raises(ValueError, match="under one pixel"):
        crop_rect((512, 512), (0.5, 0.5, 0.501, 0.6))  # 256.0 -> 256 and 256.512 -> 256
    image = Image.effect_noise((64, 64), 60).convert("RGB")
    seen = protocol_image(image, "sa_1.jpg")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)  # PIL's default quality, as the benchmark's script saves
    assert np.array_equal(np.asarray(seen), np.asarray(Image.open(buffer).convert("RGB")))
    assert not np.array_equal(np.asarray(seen), np.asarray(image))  # JPEG changed it: the benchmark's pixels
    assert np.array_equal(np.asarray(protocol_image(image, "sa_1.png")), np.asarray(image))


def _rows(*statuses: tuple[str, str, str, str]) -> list[dict[str, Any]]:
    dims = ("spatial", "color", "texture", "shape")
    return [{f"layoutsam_{d}_status": s for d, s in zip(dims, row, strict=True)} for row in statuses]


def test_aggregation_on_hand_computed_cases() -> None:
    rows = _rows(("yes", "yes", "no", "yes"),
                 ("yes", "failed", "yes", "yes"),
                 ("no", "not asked", "not asked", "not asked"),
                 ("failed", "not asked", "not asked", "not asked"))
    summary = aggregate(rows)
    # spatial: 2 yes of 4 regions = 50 %; colour: 1 of 4 = 25 %; texture 1 of 4; shape 2 of 4
    assert {d: s["score"] for d, s in summary.items()} == {"spatial": 50.0, "color": 25.0, "texture": 25.0,
                                                           "shape": 50.0}
    assert summary["spatial"] == {"regions": 4, "yes": 2, "no": 1, "failed": 1, "not asked": 0, "score": 50.0}
    assert summary["color"]["failed"] == 1 and summary["color"]["not asked"] == 2
    assert aggregate([])["shape"]["score"] is None
    with pytest.raises(ValueError, match="no LayoutSAM-Eval spatial status"):
        aggregate([{"layoutsam_spatial_status": "maybe"}])


@pytest.mark.parametrize("answer", ["Yes", "yes", "YES.", " No \n", '"Yes"', "**No**", "\u201cyes.\u201d"])
def test_usable_answers(answer: str) -> None:
    assert parse_yes_no(answer) is answer.strip().strip('"*\u201c\u201d').lower().startswith("y")


@pytest.mark.parametrize(("answer", "problem"), [
    ("", "empty"), ("Yes, the ball is red.", "expected exactly Yes or No"), ("eyes", "expected exactly"),
    ('{"answer": "yes"}', "expected exactly"), ("Yes No", "expected exactly"), ("y" * 300, "longer than"),
])
def test_unusable_answers(answer: str, problem: str) -> None:
    with pytest.raises(AnswerError, match=problem):
        parse_yes_no(answer)


def test_the_benchmarks_questions_word_for_word() -> None:
    asked = questions("wooden/oak chair", "a brown/red chair")
    assert asked["spatial"] == ('Is the subject "woodenoak chair" present in the image? Strictly answer with "Yes" '
                                'or "No", without any irrelevant words.')
    assert asked["texture"] == ('Is the subject in "woodenoak chair" in the image consistent with the texture '
                                'described in the detailed description: "a brownred chair"? Strictly answer with '
                                '"Yes" or "No", without any irrelevant words. If the texture is not mentioned in the '
                                'detailed description, the answer is "Yes".')
    assert list(asked) == ["spatial", "color", "texture", "shape"]


def _item(tmp_path: Path) -> BenchItem:
    return read_layoutsam(_bench(tmp_path), {"model": "shapes", "size": [64, 64]}).items[0]


def _judge(url: str, retries: int = 2) -> LayoutSamJudge:
    settings = MllmSettings(url=url, family="qwen2-vl", timeout=5, retries=0)
    return make_layoutsam_judge(settings, {"1042": "sa_1042.jpg"}, retries)


def _texts(server: Any) -> list[str]:
    return [r["body"]["messages"][0]["content"][1]["text"] for r in server.chat_requests]


def test_attributes_are_asked_after_a_spatial_yes_only(tmp_path: Path) -> None:
    item = _item(tmp_path)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    with serve(["Yes", "Yes.", "no", "YES", "No"]) as server:
        score = _judge(server.url).score(image, item)
    ball, sky = score.instances
    assert [ball[f"layoutsam_{d}"] for d in ("spatial", "color", "texture", "shape")] == [1.0, 1.0, 0.0, 1.0]
    assert ball["layoutsam_texture_status"] == "no" and json.loads(ball["layoutsam_color_answers"]) == ["Yes."]
    assert sky["layoutsam_spatial_status"] == "no" and sky["layoutsam_color_status"] == "not asked"
    assert [sky[f"layoutsam_{d}"] for d in ("spatial", "color", "texture", "shape")] == [0.0] * 4
    texts = _texts(server)
    assert texts[0].startswith('Is the subject "red ball" present') and "the color described" in texts[1]
    assert '"a shiny red ball with a white stripe"' in texts[1] and texts[4].startswith('Is the subject "blue sky"')
    body = server.chat_requests[0]["body"]
    assert [m["role"] for m in body["messages"]] == ["user"] and body["temperature"] == 0
    assert "response_format" not in body
    sent = server.chat_requests[0]["body"]["messages"][0]["content"][0]["image_url"]["url"]
    crop = Image.open(io.BytesIO(base64.b64decode(sent.split(",", 1)[1])))
    assert crop.size == (25 - 6, 59 - 32)  # int(0.1*64)=6 .. int(0.4*64)=25, int(0.5*64)=32 .. int(0.933*64)=59


def test_hostile_answers_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    item = _item(tmp_path)
    image = Image.new("RGB", (64, 64))
    garbage = ["\x1b[31mgarbage", '{"correct": true}', "Yes, definitely"]  # three unusable answers: failed
    with serve([*garbage, "yes", "maybe", "No", "Yes", "Yes"]) as server:
        score = _judge(server.url).score(image, item)
    ball, sky = score.instances
    assert ball["layoutsam_spatial_status"] == "failed" and ball["layoutsam_spatial"] == 0.0
    assert "unusable answer after 3 tries" in ball["layoutsam_spatial_error"]
    assert json.loads(ball["layoutsam_spatial_answers"]) == ["[31mgarbage", '{"correct": true}', "Yes, definitely"]
    assert ball["layoutsam_color_status"] == "not asked"
    retry = server.chat_requests[1]["body"]["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"] and "exactly one word" in retry[2]["content"]
    assert sky["layoutsam_spatial_status"] == "yes" and sky["layoutsam_color_status"] == "no"
    assert json.loads(sky["layoutsam_color_answers"]) == ["maybe", "No"]
    assert sky["layoutsam_texture_status"] == sky["layoutsam_shape_status"] == "yes"


def test_a_dying_server_is_recorded_per_question(tmp_path: Path) -> None:
    item = _item(tmp_path)
    image = Image.new("RGB", (64, 64))
    with serve(["Yes", Reply(500, {"error": {"message": "out of memory"}}, {"retry-after-ms": "10"})]) as server:
        judge = _judge(server.url)
        first = judge.score(image, item)
    after = judge.score(image, item)  # the server is gone
    assert first.instances[0]["layoutsam_color_status"] == "failed"
    assert "HTTP 500" in first.instances[0]["layoutsam_color_error"]
    assert first.instances[0]["layoutsam_texture_status"] == "failed"  # the script is used up: 500 again
    assert all(row["layoutsam_spatial_status"] == "failed" and "cannot reach" in row["layoutsam_spatial_error"]
               for row in after.instances)
    assert aggregate(after.instances)["spatial"] == {"regions": 2, "yes": 0, "no": 0, "failed": 2, "not asked": 0,
                                                     "score": 0.0}


def test_a_region_under_one_pixel_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    rows = [{**ROWS[0], "bbox_list": "[[40, 150, 160, 280], [0, 0, 400, 1]]"}, ROWS[1]]  # 1/300 -> 0.003 -> 0 px
    item = read_layoutsam(_bench(tmp_path, rows), {"model": "shapes", "size": [64, 64]}).items[0]
    assert isinstance(region_crops(Image.new("RGB", (64, 64)), item)[1], str)
    with serve(["No"]) as server:
        score = _judge(server.url).score(Image.new("RGB", (64, 64)), item)
    assert score.instances[1]["layoutsam_spatial_status"] == "failed"
    assert "under one pixel" in score.instances[1]["layoutsam_spatial_error"] and len(server.chat_requests) == 1


def test_eval_runs_layoutsam_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """Two rows (three regions) on the tiny FLUX, judged by a scripted server that says yes to everything."""
    from eligen.pipeline.bench.tiny_scorers import write_tiny_scorers

    folder, out = _bench(tmp_path), tmp_path / "out"
    clip = write_tiny_scorers(tmp_path / "scorers")["clip"]
    command = ["eval", str(folder), "--model", str(tiny_model), "--steps", "2", "--size", "64x64", "--device", "cpu",
               "-o", str(out), "--clip-model", str(clip), "--pick-model", str(clip), "--mllm-model", "minicpm-v-2.6",
               "--mllm-retries", "0",
               "--mllm-family", "qwen2-vl"]
    with serve(["Yes"] * 12) as server:
        result = runner.invoke(app, [*command, "--mllm-url", server.url])
    assert result.exit_code == 0, result.output
    assert "LayoutSAM-Eval" in result.output and "answered yes to all 12" not in result.output  # under 20 answers
    assert len(server.chat_requests) == 12  # 3 regions x 4 questions
    report = json.loads((out / "results.json").read_text())
    bench = report["benchmark"]
    assert bench["kind"] == "layoutsam" and bench["file_names"] == {"1042": "sa_1042.jpg", "7": "sa_7.jpg"}
    assert {Path(f).name: d for f, d in bench["files_sha256"].items()} == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").glob("*.parquet"))}
    assert report["options"]["seeds"] == 1  # the benchmark's one image per layout
    scorer = next(s for s in report["scorers"] if s["name"] == "layoutsam-vqa")
    assert scorer["model"] == "minicpm-v-2.6" and "spatial" in scorer["questions"]
    assert {d: s["score"] for d, s in report["layoutsam"].items()} == dict.fromkeys(
        ("spatial", "color", "texture", "shape"), 100.0)
    first = report["per_image"][0]
    assert first["item"] == "1042" and json.loads(first["instances"][0]["layoutsam_shape_answers"]) == ["Yes"]
    assert {"clip_global", "pick_score"} <= first["image"].keys() and "PickScore" in result.output
    for seed_image in ("sa_1042.jpg", "sa_7.jpg"):  # as the benchmark's own scorer reads them
        exported = Image.open(out / "layoutsam-images" / "s0" / seed_image)
        assert exported.format == "JPEG" and exported.size == (64, 64)

    for file in (out / "scores").glob("*.json"):
        file.unlink()
    with serve(["Yes", "No", "No", "No", "garbage", "Yes", "No", "No", "Yes"]) as server:
        again = runner.invoke(app, [*command, "--mllm-url", server.url, "--score-only"])
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "results.json").read_text())["layoutsam"]
    # ball: spatial yes, colour/texture/shape no; sky: failed (garbage, no re-ask); chair: yes, no, no, yes
    assert summary["spatial"] == {"regions": 3, "yes": 2, "no": 0, "failed": 1, "not asked": 0,
                                  "score": pytest.approx(200 / 3)}
    assert {d: (s["yes"], s["no"], s["not asked"]) for d, s in summary.items() if d != "spatial"} == {
        "color": (0, 2, 1), "texture": (0, 2, 1), "shape": (1, 1, 1)}
    assert summary["shape"]["score"] == pytest.approx(100 / 3)
    assert "1 LayoutSAM-Eval answers failed" in again.output


def test_the_hub_id_when_the_hub_cannot_be_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    result = runner.invoke(app, ["eval", DATASET_ID, "--model", "shapes", "--scorer", "clip"])
    assert result.exit_code == 1, result.output
    assert f"cannot download {DATASET_ID}" in result.output and "huggingface-cli download" in result.output


def test_two_processes_give_what_one_does(tiny_model: Path, tmp_path: Path) -> None:
    """Sharded over two processes with accelerate: the same answers, scores and exported files as one process."""
    import os
    import subprocess
    import sys

    folder = _bench(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with serve(["Yes"] * 24) as server:
        common = [sys.executable, "-m", "eligen", "eval", str(folder), "--model", str(tiny_model), "--steps", "2",
                  "--size", "64x64", "--device", "cpu", "--scorer", "layoutsam", "--mllm-url", server.url,
                  "--mllm-model", "m"]
        for name, extra in (("one", []), ("two", ["--num-processes", "2"])):
            done = subprocess.run([*common, "-o", str(tmp_path / name), *extra], env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two"))
    assert two["processes"] == 2 and one["per_image"] == two["per_image"] and one["layoutsam"] == two["layoutsam"]
    assert sorted(p.name for p in (tmp_path / "two" / "layoutsam-images" / "s0").iterdir()) == ["sa_1042.jpg",
                                                                                                  "sa_7.jpg"]


def test_a_judge_that_says_yes_to_everything_is_warned_of(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rich.console import Console

    from eligen.eval_layoutsam import layoutsam_table
    from eligen.pipeline.bench.report import Report, ScoredImage

    item = _item(tmp_path)
    rows = _rows(*[("yes", "yes", "yes", "yes")] * 2)
    report = Report([ScoredImage(item, seed, rows, {}) for seed in range(3)])  # 6 regions, 24 yes
    summary = layoutsam_table(report, Console(file=io.StringIO()), "t")
    assert summary["spatial"]["score"] == 100.0 and summary["shape"]["regions"] == 6
    assert "the judge answered yes to all 24 usable answers" in " ".join(capsys.readouterr().err.split())
    rows[0]["layoutsam_shape_status"] = "no"
    layoutsam_table(Report([ScoredImage(item, seed, rows, {}) for seed in range(3)]), Console(file=io.StringIO()), "t")
    assert "answered yes to all" not in capsys.readouterr().err


def test_pick_score_is_the_scaled_cosine_of_the_projected_embeddings(tmp_path: Path) -> None:
    """PickScore through get_image/text_features equals the model's own logits_per_image (the same arithmetic by
    transformers' other path), on a tiny random CLIP."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from eligen.pipeline.bench.pick_scorer import PickScorer
    from eligen.pipeline.bench.tiny_scorers import write_tiny_scorers

    folder = write_tiny_scorers(tmp_path / "scorers")["clip"]
    item = _item(tmp_path)
    image = Image.effect_noise((64, 64), 50).convert("RGB")
    score = PickScorer(str(folder), str(folder)).score(image, item)
    assert score.instances == [{}, {}]
    processor, model = CLIPProcessor.from_pretrained(folder), CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        inputs = processor(text=[item.layout.prompt], images=image, return_tensors="pt", padding=True,
                           truncation=True, max_length=77)
        expected = float(model(**inputs).logits_per_image[0, 0])
    assert score.image["pick_score"] == pytest.approx(expected, rel=1e-5, abs=1e-5)  # float32, two summation orders


def test_the_layoutsam_scorer_needs_layoutsam_eval() -> None:
    import typer

    from eligen.bench_scorers import ScorerOptions, build_scorers

    with pytest.raises(typer.BadParameter, match="scores LayoutSAM-Eval only"):
        build_scorers(["layoutsam"], ScorerOptions(mllm_url="http://127.0.0.1:9/v1", mllm_model="m"))

"""Training datasets: the metadata format, both key styles, buckets, batches, and `eligen train --check`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.dataset import DatasetError, bucket_size, read_dataset
from eligen.pipeline.layout import Layout
from eligen.pipeline.regions import entity_masks, token_masks
from eligen.pipeline.train.data import BucketBatchSampler
from eligen.pipeline.train.example import write_example_dataset

runner = CliRunner()
FACTOR = 8  # the tiny model's and FLUX.1-dev's VAE factor


def _lines(folder: Path, lines: list[object]) -> Path:
    """Write metadata.jsonl from objects (written as JSON) and raw strings (written as they are)."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (folder / "metadata.jsonl").write_text(text + "\n", encoding="utf-8")
    return folder


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """An example dataset (8 images of 64x64) plus a 128x64 image and two masks for the tests to refer to."""
    data = write_example_dataset(tmp_path / "data", 8)
    Image.new("RGB", (128, 64), (200, 200, 200)).save(data / "images" / "wide.png")
    box = np.zeros((64, 64), dtype=np.uint8)
    box[8:40, 16:48] = 255
    Image.fromarray(box).save(data / "box-mask.png")
    Image.fromarray(box[::-1].copy()).convert("RGB").save(data / "other-mask.png")
    (data / "notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "outside.png").write_bytes((data / "images" / "0000.png").read_bytes())
    return data


def test_example_dataset_regions_follow_the_inference_rule(folder: Path) -> None:
    dataset = read_dataset(folder, FACTOR, 64, 16)
    assert len(dataset.samples) == 8 and dataset.buckets() == {(64, 64): 8}
    for sample in dataset.samples:
        layout = Layout(size=(64, 64), prompt=sample.layout.prompt, entities=list(sample.layout.entities))
        expected = token_masks(entity_masks(layout, folder), FACTOR, layout)
        assert np.array_equal(sample.token_regions(), expected)
        assert sample.token_regions().shape == (len(layout.entities), 16)


def test_every_region_kind_and_unit(folder: Path) -> None:
    image = "images/0000.png"
    colour = np.zeros((64, 64, 3), dtype=np.uint8)
    colour[8:40, 16:48] = (255, 0, 0)
    Image.fromarray(colour).save(folder / "colours.png")
    box = {"prompt": "a box", "box": [16, 8, 48, 40]}
    _lines(folder, [
        {"image": image, "prompt": "p", "entities": [box]},
        {"image": image, "prompt": "p", "entities": [{"prompt": "a box", "box": [0.25, 0.125, 0.75, 0.625]}],
         "units": "fraction"},
        {"image": image, "prompt": "p", "entities": [{"prompt": "a box", "box": [250, 125, 750, 625]}],
         "units": "permille"},
        {"image": image, "prompt": "p", "entities": [{"prompt": "a box", "polygon": [[16, 8], [48, 8], [48, 40],
                                                                                      [16, 40]]}]},
        {"image": image, "prompt": "p", "entities": [{"prompt": "a box", "mask": "box-mask.png"}]},
        {"image": image, "prompt": "p", "color_mask": "colours.png", "entities": [{"prompt": "a box",
                                                                                    "color": "#ff0000"}]},
        {"image": image, "prompt": "p", "eligen_entity_prompts": ["a box"], "eligen_entity_masks": ["box-mask.png"]},
        {"image": image, "prompt": "no entities"},
    ])
    samples = read_dataset(folder, FACTOR, 64, 16).samples
    first = samples[0].token_regions()
    assert first.any()
    for sample in samples[1:7]:
        assert np.array_equal(sample.token_regions(), first), sample.source
    assert samples[6].entity_prompts == ["a box"] and samples[7].token_regions().shape == (0, 16)


def test_reference_metadata_json_works_unchanged(folder: Path) -> None:
    records = [{"image": "images/0000.png", "prompt": "a scene", "eligen_entity_prompts": ["one", "two"],
                "eligen_entity_masks": ["box-mask.png", "other-mask.png"]}]
    path = folder / "metadata_eligen.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    dataset = read_dataset(path, FACTOR, 64, 16)
    (sample,) = dataset.samples
    assert sample.entity_prompts == ["one", "two"] and sample.source == f"{path}:1"
    assert not np.array_equal(*sample.token_regions())


def test_buckets_keep_aspect_ratio_and_area() -> None:
    assert bucket_size(1024, 1024, 1024, 64) == (1024, 1024)
    assert bucket_size(1024, 768, 1024, 64) == (1152, 896)
    assert bucket_size(768, 1024, 1024, 64) == (896, 1152)
    assert bucket_size(2048, 2048, 1024, 64) == (1024, 1024)
    assert bucket_size(128, 64, 64, 16) == (96, 48)
    assert bucket_size(10_000, 10, 1024, 64) == (32384, 64)  # extreme: the short side keeps one step


def test_images_of_other_aspect_go_to_their_own_bucket(folder: Path) -> None:
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    wide = {"image": "images/wide.png", "prompt": "wide", "entities": [{"prompt": "left", "box": [0, 0, 64, 64]}]}
    _lines(folder, [*lines, wide])
    dataset = read_dataset(folder, FACTOR, 64, 16)
    assert dataset.buckets() == {(64, 64): 8, (96, 48): 1}
    assert dataset.samples[-1].token_regions().shape == (1, 18)


def test_bucket_batches_are_full_single_bucket_and_seeded() -> None:
    buckets = [(64, 64)] * 7 + [(96, 48)] * 5
    sampler = BucketBatchSampler(buckets, 2, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 3 + 2
    assert all(len(b) == 2 and len({buckets[i] for i in b}) == 1 for b in first)
    assert list(sampler) == first
    sampler.epoch = 1
    assert list(sampler) != first
    assert list(BucketBatchSampler(buckets, 2, seed=4)) != first


# (line, field): every kind of problem a line can have; each must be reported with its line number and field.
BAD_LINES: list[tuple[object, str]] = [
    ("{not json", "(json)"),
    ("[" * 5000 + "]" * 5000, "(json)"),  # nested beyond the recursion limit
    ([1, 2], "(top level)"),
    ({"prompt": "no image"}, "image"),
    ({"image": "../outside.png", "prompt": "p"}, "image"),
    ({"image": "/etc/hostname", "prompt": "p"}, "image"),
    ({"image": "images/missing.png", "prompt": "p"}, "image"),
    ({"image": "notes.txt", "prompt": "p"}, "image"),
    ({"image": "images/0000.png", "prompt": " "}, "prompt"),
    ({"image": "images/0000.png"}, "prompt"),
    ({"image": "images/0000.png", "prompt": "p", "caption": "x"}, "caption"),
    ({"image": "images/0000.png", "prompt": "p", "entities": {"prompt": "x"}}, "entities"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "no region"}]}, "entities[0]"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "box": [40, 8, 16, 40]}]},
     "entities[0].box"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "box": [16, 8, 80, 40]}]},
     "entities[0].box"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "box": [5, 5, 9, 9]}]},
     "entities[0].box"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "polygon": [[0, 0], [9, 9]]}]},
     "entities[0].polygon"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "mask": "../outside.png"}]},
     "entities[0].mask"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "mask": "nothing.png"}]},
     "entities[0].mask"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "color": "#ff0000"}]},
     "entities[0].color"),
    ({"image": "images/0000.png", "prompt": "p", "units": "inch"}, "units"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [{"prompt": "x", "box": [0.1, 0.1, 0.9, 0.9]}]},
     "units"),
    ({"image": "images/0000.png", "prompt": "p", "eligen_entity_prompts": ["a", "b"],
      "eligen_entity_masks": ["box-mask.png"]}, "eligen_entity_masks"),
    ({"image": "images/0000.png", "prompt": "p", "eligen_entity_prompts": ["a", "b"],
      "eligen_entity_masks": ["box-mask.png", "gone.png"]}, "eligen_entity_masks[1]"),
    ({"image": "images/0000.png", "prompt": "p", "eligen_entity_prompts": ["a"]}, "eligen_entity_masks"),
    ({"image": "images/0000.png", "prompt": "p", "entities": [], "eligen_entity_prompts": [],
      "eligen_entity_masks": []}, "entities"),
]


def _bad_dataset(folder: Path) -> Path:
    good = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])
    return _lines(folder, [good, *(line for line, _ in BAD_LINES)])


def test_every_bad_line_is_reported_with_line_and_field(folder: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        read_dataset(_bad_dataset(folder), FACTOR, 64, 16)
    problems = caught.value.problems
    assert len(problems) == len(BAD_LINES)
    for number, (problem, (_, field)) in enumerate(zip(problems, BAD_LINES, strict=True), start=2):
        assert problem.source == f"{folder / 'metadata.jsonl'}:{number}"
        assert problem.field == field, (number, str(problem))


def test_check_command_lists_every_bad_line_and_exits_2(folder: Path) -> None:
    result = runner.invoke(app, ["train", "--check", "--data", str(_bad_dataset(folder)), "--resolution", "64",
                                 "--bucket-step", "16"])
    assert result.exit_code == 2, result.output
    for number, (_, field) in enumerate(BAD_LINES, start=2):
        assert f"metadata.jsonl:{number}: {field}:" in result.output
    assert f"{len(BAD_LINES)} problem(s) in the dataset" in result.output


def test_check_command_accepts_a_valid_dataset(folder: Path) -> None:
    result = runner.invoke(app, ["train", "--check", "--data", str(folder), "--resolution", "64",
                                 "--bucket-step", "16"])
    assert result.exit_code == 0, result.output
    assert "8 samples" in result.output and "64x64 (8)" in result.output


def test_check_decodes_every_image(folder: Path) -> None:
    path = folder / "images" / "0003.png"
    path.write_bytes(path.read_bytes()[:50])  # the header survives, the pixels do not
    result = runner.invoke(app, ["train", "--check", "--data", str(folder), "--resolution", "64",
                                 "--bucket-step", "16"])
    assert result.exit_code == 2 and "metadata.jsonl:4: image:" in result.output


def test_missing_dataset_is_named(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--check", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "expected a dataset folder with metadata.jsonl" in result.output

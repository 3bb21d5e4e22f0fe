"""Shape scenes, the classical detector and `eligen data shapes` / `eligen eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from eligen.eval_command import register as register_eval
from eligen.pipeline.dataset import read_dataset
from eligen.pipeline.layout import load_layout
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.shapes.detector import box_iou, detect, mask_box, parse_entity, score_entity
from eligen.pipeline.shapes.scenes import PALETTE, render, scenes, shape_mask, write_shapes_dataset
from eligen.shapes_commands import register

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    register_eval(app)
    return app


def test_scenes_are_a_function_of_the_seed() -> None:
    assert scenes(20, seed=3) == scenes(20, seed=3)
    assert scenes(20, seed=3) != scenes(20, seed=4)


def test_dataset_is_deterministic_and_valid(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_shapes_dataset(a, 12, seed=5, layouts=tmp_path / "layouts")
    write_shapes_dataset(b, 12, seed=5)
    assert (a / "metadata.jsonl").read_bytes() == (b / "metadata.jsonl").read_bytes()
    for image in (a / "images").iterdir():
        assert image.read_bytes() == (b / "images" / image.name).read_bytes()
    assert len(list((tmp_path / "layouts").glob("*.yaml"))) == 12
    assert len(read_dataset(a, scale_factor=4, resolution=64, step=16, decode=True).samples) == 12


def test_scenes_have_distinct_colours_and_disjoint_shapes() -> None:
    for scene in scenes(200, seed=0):
        assert 1 <= len(scene.shapes) <= 4
        colours = [s.colour for s in scene.shapes]
        assert len(set(colours)) == len(colours)
        masks = [shape_mask(s, scene.size) for s in scene.shapes]
        assert not np.any(np.sum(masks, axis=0) > 1)
        assert scene.caption == " and ".join(f"a {s.colour} {s.kind}" for s in scene.shapes)
        assert min(scene.background) > 200


def test_detector_is_exact_on_ground_truth_renders() -> None:
    for scene in scenes(150, seed=11):
        components = detect(render(scene))
        for shape in scene.shapes:
            score = score_entity(components, shape.prompt, shape.box)
            assert score.iou > 0.99 and score.found_shape == shape.kind and score.success, (shape, score)


def test_detector_misses_are_scored_as_failures() -> None:
    scene = scenes(1, seed=2, counts=(1,))[0]
    blank = Image.new("RGB", (64, 64), scene.background)
    score = score_entity(detect(blank), scene.shapes[0].prompt, scene.shapes[0].box)
    assert score.iou == 0.0 and not score.success
    assert parse_entity("a purple triangle") == ("purple", "triangle")
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == 1 / 3


def test_detector_tolerates_noise_and_larger_images() -> None:
    rng = np.random.default_rng(0)
    scene = scenes(1, seed=7, size=128, counts=(3,))[0]
    pixels = np.asarray(render(scene)).astype(np.int16) + rng.integers(-20, 21, (128, 128, 3))
    components = detect(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
    assert all(score_entity(components, s.prompt, s.box).success for s in scene.shapes)
    assert set(PALETTE) >= {c.colour for c in components}


def test_data_shapes_command(tmp_path: Path) -> None:
    result = runner.invoke(_app(), ["data", "shapes", "-o", str(tmp_path / "d"), "--n", "5", "--seed", "1",
                                    "--entities", "2-3", "--layouts", str(tmp_path / "l")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(2 <= len(json.loads(line)["entities"]) <= 3 for line in lines)
    assert len(list((tmp_path / "d" / "masks").glob("*.png"))) == sum(len(json.loads(x)["entities"]) for x in lines)
    bad = runner.invoke(_app(), ["data", "shapes", "-o", str(tmp_path / "e"), "--entities", "0-9"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("regions", ["polygon", "mask"])
def test_layouts_with_shape_regions_cover_the_drawn_shapes(tmp_path: Path, regions: str) -> None:
    """`--regions polygon|mask`: each entity's region is its shape's outline or exact mask, not its box."""
    chosen = write_shapes_dataset(tmp_path / "d", 6, seed=3, counts=(3, 4), layouts=tmp_path / "l",
                                  regions=regions)
    for i, scene in enumerate(chosen):
        path = tmp_path / "l" / f"{i:05d}.yaml"
        layout = load_layout(path)
        masks = entity_masks(layout, path.parent, str(path))
        for shape, mask in zip(scene.shapes, masks, strict=True):
            truth = shape_mask(shape, scene.size)
            iou = (mask & truth).sum() / (mask | truth).sum()
            if regions == "mask":
                assert iou == 1.0
            else:  # the polygon is the shape's outline, filled by pixel centres: PIL's raster differs at the rim
                assert iou > 0.85, (shape, iou)
            if shape.kind != "square":
                assert mask.sum() < 0.9 * (shape.box[2] - shape.box[0]) ** 2  # smaller than the box


def test_data_shapes_allows_more_entities_than_training(tmp_path: Path) -> None:
    result = runner.invoke(_app(), ["data", "shapes", "-o", str(tmp_path / "d"), "--n", "4", "--seed", "1",
                                    "--entities", "5-6", "--layouts", str(tmp_path / "l")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()
    counts = [len(json.loads(line)["entities"]) for line in lines]
    assert max(counts) >= 5 and min(counts) >= 3, counts  # a shape without a free spot is left out
    bad = runner.invoke(_app(), ["data", "shapes", "-o", str(tmp_path / "e"), "--regions", "circle"])
    assert bad.exit_code == 2 and "--regions" in bad.output


def test_eval_command_runs_and_writes_report(tiny_model: Path, tmp_path: Path) -> None:
    write_shapes_dataset(tmp_path / "d", 2, seed=0, counts=(2,),
                         layouts=tmp_path / "layouts")
    result = runner.invoke(_app(), ["eval", str(tmp_path / "layouts"), "--model", str(tiny_model), "--seeds", "2",
                                    "--steps", "2", "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    total = report["levels"]["all"]
    assert total["images"] == 4 and total["instances"] == 8 and report["levels"]["2 entities"] == total
    assert 0.0 <= total["instance_means"]["iou"] <= 1.0 and len(report["per_image"]) == 4
    assert [s["name"] for s in report["scorers"]] == ["shapes-detector"]
    assert Image.open(tmp_path / "out" / "contact.png").size[0] > 0


def test_eval_refuses_colour_mask_regions(tiny_model: Path, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "colours.png")
    layout = tmp_path / "colour.yaml"
    layout.write_text("size: [64, 64]\nprompt: a red circle\ncolor_mask: colours.png\nentities:\n"
                      "  - prompt: a red circle\n    color: '#ff0000'\n")
    result = runner.invoke(_app(), ["eval", str(layout), "--model", str(tiny_model)])
    assert result.exit_code == 2 and "expected a box, polygon or mask to score, got a color" in result.output


def test_region_scores_on_renders_and_on_a_half_drawn_shape() -> None:
    """On a ground-truth render, every shape covers its exact mask: mask IoU 1, coverage 1. A square drawn over
    only the left half of its region: coverage 1/2, mask IoU 1/2 (the drawn half is all inside)."""
    for scene in scenes(20, seed=4):
        components = detect(render(scene))
        for shape in scene.shapes:
            region = shape_mask(shape, scene.size)
            score = score_entity(components, shape.prompt, mask_box(region), region)
            assert score.success and score.mask_iou == 1.0 and score.coverage == 1.0
    region = np.zeros((64, 64), dtype=bool)
    region[10:30, 10:30] = True
    pixels = np.full((64, 64, 3), 245, dtype=np.uint8)
    pixels[10:30, 10:20] = PALETTE["red"]
    score = score_entity(detect(Image.fromarray(pixels)), "a red square", mask_box(region), region)
    assert score.coverage == 0.5 and score.mask_iou == 0.5
    missing = score_entity(detect(Image.fromarray(pixels)), "a blue square", mask_box(region), region)
    assert missing.mask_iou == 0.0 and missing.coverage == 0.0 and not missing.success


def test_eval_scores_mask_and_polygon_layouts(tiny_model: Path, tmp_path: Path) -> None:
    for regions in ("mask", "polygon"):
        write_shapes_dataset(tmp_path / regions, 2, seed=0, counts=(2,), layouts=tmp_path / f"l-{regions}",
                             regions=regions)
        result = runner.invoke(_app(), ["eval", str(tmp_path / f"l-{regions}"), "--model", str(tiny_model),
                                        "--seeds", "1", "--steps", "2", "-o", str(tmp_path / f"out-{regions}"),
                                        "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "mask IoU" in result.output
        report = json.loads((tmp_path / f"out-{regions}" / "results.json").read_text())
        means = report["levels"]["all"]["instance_means"]
        assert 0.0 <= means["mask_iou"] <= 1.0 and 0.0 <= means["coverage"] <= 1.0
        entity = report["per_image"][0]["instances"][0]
        assert entity["mask_iou"] is not None and entity["coverage"] is not None

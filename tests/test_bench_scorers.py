"""Benchmark scorers: COCO-MIG's metric rules on synthetic detections and painted images, and the GroundingDINO +
SAM and CLIP scorers' mechanics on tiny random models built offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eligen.pipeline.bench.clip_scorer import ClipScorer, clip_score, crop_box
from eligen.pipeline.bench.coco_mig_scorer import (
    CocoMigScorer,
    detection_caption,
    instance_scores,
    resize_like_cv2,
)
from eligen.pipeline.bench.items import BenchItem, Instance
from eligen.pipeline.bench.mig_metrics import (
    COLOUR_RANGES,
    best_match,
    box_iou,
    colour_fraction,
    dominant_colour,
    masked_hsv,
    nms,
    rgb_to_hsv_opencv,
    verdict,
)
from eligen.pipeline.bench.tiny_scorers import write_tiny_scorers
from eligen.pipeline.layout import parse_layout

# IoUs of boxes with small integer corners: float64 is exact but for the last division, so 1e-12 is ample.
EXACT = 1e-12

# Painted colours and the word each must read as: mid-range shades, not the table's bounds.
PAINTS = {
    "red": (220, 20, 20),
    "yellow": (240, 220, 20),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "brown": (140, 80, 30),
}
GREY = (127, 127, 127)  # none of the table's colours: saturation 0, value between black and white


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting cores


def _canvas(width: int = 100, height: int = 60, colour: tuple[int, int, int] = GREY) -> np.ndarray:
    """An (H, W, 3) uint8 image of one colour."""
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy()


def _box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """An (H, W) bool mask true inside integer `box`."""
    mask = np.zeros(shape, dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


# --- box geometry -----------------------------------------------------------------------------------------------


def test_box_iou_known_values() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges share no area
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3, abs=EXACT)  # 50 / 150
    assert box_iou((0, 0, 10, 10), (0, 0, 5, 10)) == 0.5
    assert box_iou((0, 0, 10, 10), (2, 2, 8, 8)) == pytest.approx(0.36, abs=EXACT)  # contained: 36 / 100
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # no area at all


def test_nms_drops_boxes_overlapping_a_better_one_above_the_threshold() -> None:
    boxes = [(0, 0, 10, 9), (0, 0, 10, 10), (50, 50, 60, 60), (0, 0, 10, 8)]
    # IoU with box 1: 0.9 (dropped at 0.8), 0.8 (kept: only "above" drops); box 2 is far from all
    kept = nms(boxes, [0.5, 0.9, 0.3, 0.7], threshold=0.8)
    assert kept == [1, 3, 2]
    assert nms([], [], 0.8) == []


def test_best_match_picks_the_largest_iou_and_says_when_there_is_none() -> None:
    target = (0, 0, 10, 10)
    index, iou = best_match(target, [(20, 20, 30, 30), (0, 0, 5, 10), (0, 0, 10, 9)])
    assert index == 2
    assert iou == pytest.approx(0.9, abs=EXACT)
    assert best_match(target, []) == (None, 0.0)


# --- colour rule --------------------------------------------------------------------------------------------------


def test_hsv_matches_opencv_on_known_pixels() -> None:
    # Expected values are cv2.cvtColor(..., COLOR_RGB2HSV) of opencv-python-headless 5.1 (checked offline on
    # all 2**24 colours); (0, 1, 58) is a pixel where OpenCV's fixed-point division rounds up to 120, not 119.
    pixels = {
        (255, 0, 0): (0, 255, 255), (0, 255, 0): (60, 255, 255), (0, 0, 255): (120, 255, 255),
        (255, 255, 0): (30, 255, 255), (255, 255, 255): (0, 0, 255), (0, 0, 0): (0, 0, 0),
        (150, 75, 0): (15, 255, 150), (0, 1, 58): (120, 255, 58), (255, 0, 40): (175, 255, 255),
        (140, 80, 30): (14, 200, 140), (240, 220, 20): (27, 234, 240), (30, 180, 40): (62, 213, 180),
    }  # fmt: skip
    rgb = np.array([list(pixels)], dtype=np.uint8)
    assert [tuple(int(v) for v in hsv) for hsv in rgb_to_hsv_opencv(rgb)[0]] == list(pixels.values())


@pytest.mark.parametrize("colour", list(PAINTS))
def test_each_painted_patch_reads_as_its_colour(colour: str) -> None:
    image = _canvas()
    box = (20, 10, 60, 50)
    image[10:50, 20:60] = PAINTS[colour]
    hsv = masked_hsv(image, _box_mask(image.shape[:2], box))
    assert hsv.shape == (40 * 40, 3)
    assert colour_fraction(hsv, colour) == 1.0
    assert dominant_colour(hsv) == colour
    others = [other for other in COLOUR_RANGES if other != colour]
    assert all(colour_fraction(hsv, other) == 0.0 for other in others)


def test_colour_counts_only_the_masked_pixels() -> None:
    image = _canvas(colour=PAINTS["blue"])
    image[:, :30] = PAINTS["red"]
    hsv = masked_hsv(image, _box_mask(image.shape[:2], (0, 0, 40, 60)))  # 30 red columns and 10 blue ones
    assert colour_fraction(hsv, "red") == 0.75
    assert colour_fraction(hsv, "blue") == 0.25
    assert dominant_colour(hsv) == "red"
    nothing = masked_hsv(image, np.zeros(image.shape[:2], bool))
    assert colour_fraction(nothing, "red") == 0.0
    assert dominant_colour(nothing) is None
    assert dominant_colour(masked_hsv(_canvas(), _box_mask((60, 100), (0, 0, 10, 10)))) is None  # grey: no colour


@pytest.mark.parametrize(("red_pixels", "colour_ok"), [(19, False), (20, True), (85, True)])
def test_colour_is_right_from_a_fifth_of_the_mask(red_pixels: int, colour_ok: bool) -> None:
    image = _canvas(100, 1, PAINTS["green"])
    image[0, :red_pixels] = PAINTS["red"]
    mask = np.ones((1, 100), dtype=bool)
    instance = Instance("a red apple", (0, 0, 100, 1), colour="red", category="apple")
    scores = instance_scores(instance, [(0, 0, 100, 1)], image, mask)
    assert scores["colour_fraction"] == red_pixels / 100
    assert scores["colour_ok"] is colour_ok
    assert scores["success"] is colour_ok
    assert scores["found_colour"] == ("red" if red_pixels > 50 else "green")


def test_empty_mask_is_a_wrong_colour() -> None:
    image = _canvas(colour=PAINTS["red"])
    instance = Instance("a red apple", (0, 0, 10, 10), colour="red", category="apple")
    scores = instance_scores(instance, [(0, 0, 10, 10)], image, np.zeros(image.shape[:2], bool))
    assert (scores["colour_ok"], scores["found_colour"], scores["success"], scores["miou"]) == (False, None, False, 0.0)
    assert scores["iou"] == 1.0


def test_unknown_colour_word_is_refused() -> None:
    with pytest.raises(ValueError, match="purple"):
        colour_fraction(masked_hsv(_canvas(), _box_mask((60, 100), (0, 0, 10, 10))), "purple")


# --- success and mIoU rules ---------------------------------------------------------------------------------------


def test_verdict_rules() -> None:
    assert verdict(False, 0.0, True) == verdict(False, 0.0, None)
    assert not verdict(False, 0.0, True).success
    assert verdict(True, 0.4, True).miou == 0.4  # under the threshold: the IoU counts as it is
    assert not verdict(True, 0.4, True).success
    assert verdict(True, 0.5, True).success  # the threshold itself is enough
    assert verdict(True, 0.9, False).miou == 0.0  # right place, wrong colour: nothing
    assert verdict(True, 0.9, None).success  # no colour asked: position decides


def test_success_ratio_and_miou_per_level_on_synthetic_detections() -> None:
    image = _canvas(200, 100)
    for box, paint in [((0, 0, 40, 40), "red"), ((50, 0, 90, 40), "blue"), ((100, 0, 140, 40), "red")]:
        image[box[1] : box[3], box[0] : box[2]] = PAINTS[paint]
    cases = {  # level -> (instance, detections after NMS)
        "L2": [
            (Instance("a red apple", (0, 0, 40, 40), colour="red"), [(0, 0, 40, 40), (150, 50, 160, 60)]),  # IoU 1
            (Instance("a blue cup", (50, 0, 90, 40), colour="blue"), [(50, 0, 90, 20)]),  # IoU 0.5, just enough
        ],
        "L3": [
            (Instance("a blue bowl", (150, 50, 190, 90), colour="blue"), []),  # missing
            (Instance("a blue cup", (50, 0, 90, 40), colour="blue"), [(70, 0, 110, 40)]),  # IoU 1/3
            (Instance("a green kite", (100, 0, 140, 40), colour="green"), [(100, 0, 140, 40)]),  # painted red
        ],
    }
    rows = {
        level: [instance_scores(inst, found, image, _box_mask(image.shape[:2], tuple(map(int, inst.box))))
                for inst, found in pairs]
        for level, pairs in cases.items()
    }
    assert [row["success"] for row in rows["L2"]] == [True, True]
    assert [row["success"] for row in rows["L3"]] == [False, False, False]
    assert [row["detected"] for row in rows["L3"]] == [False, True, True]
    assert rows["L3"][2]["colour_ok"] is False
    assert rows["L3"][2]["found_colour"] == "red"
    assert rows["L3"][0]["colour_ok"] is False  # grey where the bowl should be
    # what the report's per-level means give: the benchmark's instance success ratio and mIoU
    assert np.mean([row["miou"] for row in rows["L2"]]) == pytest.approx(0.75, abs=EXACT)
    assert np.mean([row["miou"] for row in rows["L3"]]) == pytest.approx(1 / 9, abs=EXACT)
    assert np.mean([row["iou"] for row in rows["L3"]]) == pytest.approx((0 + 1 / 3 + 1) / 3, abs=EXACT)


def test_instance_without_a_colour_is_judged_on_position() -> None:
    instance = Instance("a kite", (0, 0, 10, 10))
    scores = instance_scores(instance, [(0, 0, 10, 10)], _canvas(), _box_mask((60, 100), (0, 0, 10, 10)))
    assert scores["colour_ok"] is None
    assert scores["colour_fraction"] is None
    assert scores["success"] is True


def test_detection_caption_is_the_object_name() -> None:
    light = Instance("a red Traffic Light", (0, 0, 1, 1), colour="red", category="Traffic Light")
    assert detection_caption(light) == "traffic light."
    assert detection_caption(Instance("a kite", (0, 0, 1, 1))) == "a kite."


def test_resize_halves_by_averaging_2x2_blocks_as_cv2_does() -> None:
    # cv2.resize (bilinear, no antialiasing) at exactly half size averages each 2x2 block; PIL's antialiased
    # bilinear would blend in the neighbouring blocks too
    values = np.array([[0, 100, 200, 40], [100, 200, 0, 40], [8, 8, 60, 80], [16, 16, 100, 120]], dtype=np.uint8)
    image = Image.fromarray(np.repeat(values[..., None], 3, axis=-1))
    halved = np.asarray(resize_like_cv2(image, 2))[..., 0]
    assert halved.tolist() == [[100, 70], [12, 90]]


# --- CLIP arithmetic ----------------------------------------------------------------------------------------------


def test_clip_score_is_100_times_the_cosine() -> None:
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[6.0, 8.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 0.0]])
    # float32 cosines carry about 1e-7 relative error, 1e-5 on the 100 scale
    assert clip_score(image, text) == pytest.approx([100.0, 0.0, -100.0, 100 / 2**0.5], abs=1e-4)


def test_crop_box_rounds_outwards_and_clamps() -> None:
    image = Image.new("RGB", (100, 60))
    assert crop_box(image, (10.2, 5.7, 20.1, 30.0)).size == (11, 25)  # x 10..21, y 5..30
    assert crop_box(image, (-10, -5, 500, 500)).size == (100, 60)
    assert crop_box(image, (120, 0, 140, 10)) is None


# --- scorers on tiny random models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_scorers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return write_tiny_scorers(tmp_path_factory.mktemp("tiny-scorers"))
    finally:
        torch.set_num_threads(threads)


def _item() -> BenchItem:
    """A 2-instance COCO-MIG-like item on a 256 x 192 image."""
    boxes = [(10.0, 10.0, 100.0, 90.0), (120.0, 50.0, 240.0, 180.0)]
    layout = parse_layout({
        "prompt": "a red banana and a blue cup on a table", "size": [256, 192],
        "entities": [{"prompt": "a red banana", "box": list(boxes[0])},
                     {"prompt": "a blue cup", "box": list(boxes[1])}],
    })  # fmt: skip
    instances = (Instance("a red banana", boxes[0], colour="red", category="banana"),
                 Instance("a blue cup", boxes[1], colour="blue", category="cup"))
    return BenchItem(id="mig-0", level="L2", layout=layout, instances=instances)


def _image() -> Image.Image:
    """A seeded noise image the size of `_item()`'s layout."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8))


def test_tiny_tokenizers_know_every_character_of_a_prompt(tiny_scorers: dict[str, Path]) -> None:
    from transformers import AutoProcessor

    bert = AutoProcessor.from_pretrained(tiny_scorers["grounding-dino"]).tokenizer
    assert bert.unk_token_id not in bert("traffic light. zebra 42.")["input_ids"]
    clip = AutoProcessor.from_pretrained(tiny_scorers["clip"]).tokenizer
    ids = clip("a Red banana, 2 cups!")["input_ids"]
    assert clip.decode(ids, skip_special_tokens=True).replace(" ", "") == "aredbanana,2cups!"


def test_coco_mig_scorer_on_tiny_models(tiny_scorers: dict[str, Path]) -> None:
    scorer = CocoMigScorer(detector=str(tiny_scorers["grounding-dino"]), segmenter=str(tiny_scorers["sam"]),
                           box_threshold=0.0)  # random weights: every query's score is above 0
    item, image = _item(), _image()
    first = scorer.score(image, item)
    assert len(first.instances) == 2
    for row in first.instances:
        assert set(row) == {"detected", "iou", "miou", "colour_fraction", "colour_ok", "found_colour", "success"}
        assert row["detected"] is True
        assert isinstance(row["iou"], float) and 0.0 <= row["iou"] <= 1.0
        assert isinstance(row["miou"], float) and 0.0 <= row["miou"] <= row["iou"]
        assert isinstance(row["colour_fraction"], float) and 0.0 <= row["colour_fraction"] <= 1.0
        assert isinstance(row["colour_ok"], bool) and isinstance(row["success"], bool)
        assert row["found_colour"] is None or row["found_colour"] in COLOUR_RANGES
    assert first.image == {"image_success": all(row["success"] for row in first.instances)}
    assert scorer.score(image, item) == first  # deterministic: same image, same scores
    json.dumps(scorer.describe())  # results.json must be able to hold it
    assert scorer.describe()["detector"] == str(tiny_scorers["grounding-dino"])


def test_coco_mig_scorer_box_threshold_decides_detection(tiny_scorers: dict[str, Path]) -> None:
    scorer = CocoMigScorer(detector=str(tiny_scorers["grounding-dino"]), segmenter=str(tiny_scorers["sam"]),
                           box_threshold=1.0)  # a sigmoid never exceeds 1
    rows = scorer.score(_image(), _item()).instances
    found = [(row["detected"], row["iou"], row["miou"], row["success"]) for row in rows]
    assert found == [(False, 0.0, 0.0, False)] * 2


def test_clip_scorer_on_tiny_model(tiny_scorers: dict[str, Path]) -> None:
    scorer = ClipScorer(str(tiny_scorers["clip"]))
    item, image = _item(), _image()
    first = scorer.score(image, item)
    assert [set(row) for row in first.instances] == [{"clip_entity"}] * 2
    assert set(first.image) == {"clip_global"}
    values = [row["clip_entity"] for row in first.instances] + [first.image["clip_global"]]
    assert all(isinstance(v, float) and -100.0 <= v <= 100.0 for v in values)
    assert len(set(values)) == 3  # three different crops and texts: random weights still tell them apart
    assert scorer.score(image, item) == first  # deterministic


def test_clip_entity_score_is_the_squashed_crop_against_the_entity_prompt(tiny_scorers: dict[str, Path]) -> None:
    scorer = ClipScorer(str(tiny_scorers["clip"]))
    item, image = _item(), _image()
    entity = scorer.score(image, item).instances[1]["clip_entity"]
    crop = image.crop((120, 50, 240, 180)).resize((130, 130), Image.Resampling.BICUBIC)
    alone = BenchItem("crop", "L2", item.layout.model_copy(update={"prompt": "a blue cup"}), ())
    # the crop scored alone, as a whole image: same numbers but for batch size (float32, ~1e-6 on the 100 scale)
    assert scorer.score(crop, alone).image["clip_global"] == pytest.approx(entity, abs=1e-3)


def test_clip_scorer_gives_none_for_a_box_outside_the_image(tiny_scorers: dict[str, Path]) -> None:
    item = _item()
    outside = BenchItem(item.id, item.level, item.layout,
                        (item.instances[0], Instance("a blue cup", (300.0, 0.0, 340.0, 40.0), colour="blue")))
    rows = ClipScorer(str(tiny_scorers["clip"])).score(_image(), outside).instances
    assert rows[1] == {"clip_entity": None}
    assert isinstance(rows[0]["clip_entity"], float)

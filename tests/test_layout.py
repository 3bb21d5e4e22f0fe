"""Layout schema and rasterising: defaults, units, region kinds, token regions, overrides, round trips.

Everything runs on small canvases with no model: the layout module and the regions module are pure
Python, numpy and PIL. Token regions are checked against an independent torch implementation of the
token rule of docs/layout-format.md ("How regions become tokens").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.layout import DATA_URL_PREFIX, DEFAULT_MODEL, LayoutError, load_layout, parse_layout
from eligen.pipeline.model_info import default_max_sequence_length, resolve_model, scale_factor
from eligen.pipeline.outputs import read_png_metadata, save_png
from eligen.pipeline.regions import entity_masks, inline_masks, latent_mask, token_masks
from eligen.sources import load_source

W, H = 64, 48  # a small canvas, multiples of 16, not square


def _layout(**data):
    return parse_layout({"prompt": "a scene", "size": [W, H], **data})


def _masks(tmp_path: Path, **data) -> list[np.ndarray]:
    return entity_masks(_layout(**data), tmp_path)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_are_as_documented() -> None:
    layout = parse_layout({"prompt": "a desk"})
    assert layout.version == 1
    assert layout.model == DEFAULT_MODEL == "black-forest-labs/FLUX.1-dev"
    assert layout.loras is None  # the model's default LoRAs (EliGen for FLUX.1-dev)
    assert layout.size == (1024, 1024) and (layout.width, layout.height) == (1024, 1024)
    assert layout.seed is None and layout.seeds == []
    assert layout.steps == 50
    assert layout.cfg == 3.0
    assert layout.guidance == 3.5
    assert layout.schedule == "scheduler"
    assert layout.units == "px"
    assert layout.negative_prompt == ""
    assert layout.max_sequence_length is None  # resolved from the model folder at generation time
    assert layout.regions_on_negative is False
    assert layout.color_mask is None
    assert layout.entities == []


def test_lora_defaults_and_seed_forms() -> None:
    layout = parse_layout({"prompt": "a", "loras": [{"path": "modelscope/EliGen"}], "seed": [3, 1, 3]})
    assert layout.loras[0].file is None and layout.loras[0].scale == 1.0
    assert layout.seeds == [3, 1, 3]
    assert parse_layout({"prompt": "a", "seed": 7}).seeds == [7]


def test_max_sequence_length_default_comes_from_the_model_folder(tmp_path: Path) -> None:
    declared = tmp_path / "declared"
    declared.mkdir()
    (declared / "eligen.json").write_text(json.dumps({"max_sequence_length": 32}))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert default_max_sequence_length(str(declared)) == 32
    assert default_max_sequence_length(str(plain)) == 512
    assert default_max_sequence_length(DEFAULT_MODEL) == 512


def test_scale_factor_comes_from_the_vae_config(tmp_path: Path) -> None:
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [16, 32, 64]}))
    assert scale_factor(str(tmp_path)) == 4
    assert scale_factor(DEFAULT_MODEL) == 8


def test_a_random_seed_is_drawn_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "layout.yaml"
    path.write_text("prompt: a desk\n")
    drawn = [load_source(path, {}).seeds for _ in range(5)]
    assert all(len(seeds) == 1 and 0 <= seeds[0] < 2**32 for seeds in drawn)
    assert len({seeds[0] for seeds in drawn}) > 1
    (tmp_path / "fixed.yaml").write_text("prompt: a desk\nseed: [5, 6]\n")
    assert load_source(tmp_path / "fixed.yaml", {}).seeds == [5, 6]


# --- units and region kinds ------------------------------------------------------------------------


def test_units_give_the_same_pixel_mask(tmp_path: Path) -> None:
    px = _masks(tmp_path, entities=[{"prompt": "x", "box": [8, 12, 40, 36]}])[0]
    fraction = _masks(tmp_path, units="fraction", entities=[{"prompt": "x", "box": [0.125, 0.25, 0.625, 0.75]}])[0]
    permille = _masks(tmp_path, units="permille", entities=[{"prompt": "x", "box": [125, 250, 625, 750]}])[0]
    expected = np.zeros((H, W), dtype=bool)
    expected[12:36, 8:40] = True
    assert px.dtype == bool and px.shape == (H, W)
    np.testing.assert_array_equal(px, expected)
    np.testing.assert_array_equal(fraction, expected)
    np.testing.assert_array_equal(permille, expected)


def test_box_covers_pixels_whose_centres_are_inside(tmp_path: Path) -> None:
    """[x1, x2) x [y1, y2) on pixel centres: a box from 3.4 to 10.5 covers pixels 3..9."""
    mask = _masks(tmp_path, entities=[{"prompt": "x", "box": [3.4, 0.6, 10.5, 5.5]}])[0]
    expected = np.zeros((H, W), dtype=bool)
    expected[1:5, 3:10] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("box", [[0, 0, W, H], [8, 12, 40, 36], [3.3, 5.7, 20.2, 30.9], [0.5, 0.5, 1.5, 1.5]])
def test_box_as_polygon_equals_the_box(tmp_path: Path, box: list[float]) -> None:
    x1, y1, x2, y2 = box
    as_box, as_polygon = _masks(tmp_path, entities=[
        {"prompt": "x", "box": box},
        {"prompt": "y", "polygon": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]},
    ])
    assert as_box.any()
    np.testing.assert_array_equal(as_polygon, as_box)


def test_polygon_covers_pixels_whose_centres_are_inside(tmp_path: Path) -> None:
    points = [(3.2, 2.7), (60.1, 10.3), (20.6, 45.9)]
    mask = _masks(tmp_path, entities=[{"prompt": "x", "polygon": [list(p) for p in points]}])[0]
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    signs = []
    for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1], strict=True):
        signs.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax) > 0)
    expected = np.all(signs, axis=0) | ~np.any(signs, axis=0)  # same side of all three edges
    np.testing.assert_array_equal(mask, expected)


def test_mask_png_white_is_region_and_threshold_is_mean_above_half(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[0, 0] = (128, 128, 128)  # mean 128 > 127.5: on
    rgb[0, 1] = (127, 127, 127)  # off
    rgb[0, 2] = (255, 255, 0)  # mean 170: on
    rgb[0, 3] = (255, 0, 0)  # mean 85: off
    rgb[10:20, 30:50] = 255
    _save(tmp_path / "masks" / "m.png", rgb)
    mask = _masks(tmp_path, entities=[{"prompt": "x", "mask": "masks/m.png"}])[0]
    expected = np.zeros((H, W), dtype=bool)
    expected[0, 0] = expected[0, 2] = True
    expected[10:20, 30:50] = True
    np.testing.assert_array_equal(mask, expected)


def test_mask_of_another_size_is_resized_with_nearest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    small = rng.random((H // 4, W // 4)) < 0.4  # 4x smaller: every pixel becomes a 4x4 block
    big = rng.random((H * 2, W * 2)) < 0.4  # 2x larger: pixel-centre sampling picks odd rows and columns
    odd = rng.random((29, 37)) < 0.4  # no integer ratio
    _save(tmp_path / "small.png", small.astype(np.uint8) * 255)
    _save(tmp_path / "big.png", big.astype(np.uint8) * 255)
    _save(tmp_path / "odd.png", odd.astype(np.uint8) * 255)
    got = _masks(tmp_path, entities=[{"prompt": n, "mask": f"{n}.png"} for n in ("small", "big", "odd")])
    np.testing.assert_array_equal(got[0], np.kron(small, np.ones((4, 4), dtype=bool)))
    np.testing.assert_array_equal(got[1], big[1::2, 1::2])
    rows = np.floor((np.arange(H) + 0.5) * odd.shape[0] / H).astype(int)
    cols = np.floor((np.arange(W) + 0.5) * odd.shape[1] / W).astype(int)
    np.testing.assert_array_equal(got[2], odd[rows][:, cols])


def test_colour_mask_picks_exactly_that_colour(tmp_path: Path) -> None:
    colours = np.full((H, W, 3), 250, dtype=np.uint8)
    colours[5:20, 4:30] = (255, 0, 0)
    colours[25:40, 10:60] = (254, 0, 0)  # one step away from red: not red
    colours[30:45, 40:50] = (0, 255, 0)
    _save(tmp_path / "colours.png", colours)
    red, green = _masks(tmp_path, color_mask="colours.png", entities=[
        {"prompt": "x", "color": "#FF0000"},  # upper case is accepted
        {"prompt": "y", "color": "#00ff00"},
    ])
    np.testing.assert_array_equal(red, np.all(colours == (255, 0, 0), axis=2))
    np.testing.assert_array_equal(green, np.all(colours == (0, 255, 0), axis=2))
    assert red.sum() == 15 * 26


def test_colour_mask_of_another_size_keeps_exact_colours(tmp_path: Path) -> None:
    """Nearest resizing never blends two colours into a third."""
    colours = np.zeros((H // 2, W // 2, 3), dtype=np.uint8)
    colours[:, : W // 4] = (0, 102, 255)
    colours[3:7, 20:27] = (255, 128, 0)
    _save(tmp_path / "colours.png", colours)
    blue, orange = _masks(tmp_path, color_mask="colours.png", entities=[
        {"prompt": "x", "color": "#0066ff"},
        {"prompt": "y", "color": "#ff8000"},
    ])
    big = colours.repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(blue, np.all(big == (0, 102, 255), axis=2))
    np.testing.assert_array_equal(orange, np.all(big == (255, 128, 0), axis=2))


def test_paths_resolve_relative_to_the_layout_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "project"
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[8:24, 16:48] = 255
    _save(folder / "masks" / "m.png", mask)
    (folder / "models" / "tiny").mkdir(parents=True)
    (folder / "layout.yaml").write_text(
        f"prompt: a\nsize: [{W}, {H}]\nmodel: models/tiny\nentities:\n  - prompt: x\n    mask: masks/m.png\n"
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: paths still resolve against the file
    src = load_source(Path("project/layout.yaml"), {})
    assert src.layout.model == str((folder / "models" / "tiny").resolve())
    np.testing.assert_array_equal(entity_masks(src.layout, src.base_dir)[0], mask > 0)


def test_model_is_a_local_folder_or_a_hub_id(tmp_path: Path) -> None:
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert resolve_model("org/name", tmp_path) == str((tmp_path / "org" / "name").resolve())  # local wins
    assert resolve_model("black-forest-labs/FLUX.1-dev", tmp_path) == "black-forest-labs/FLUX.1-dev"
    for missing in ("./no-such-folder", "/no/such/folder", "~/no-such-eligen-folder", "a/b/c"):
        with pytest.raises(LayoutError, match="does not exist"):
            resolve_model(missing, tmp_path)


# --- token regions (docs/layout-format.md) ----------------------------------------------------------


def _reference_tokens(mask: np.ndarray, factor: int, mode: str = "nearest-exact") -> np.ndarray:
    """Independent rule: latent grid by torch nearest-exact, on above 127.5, then any of each 2x2 patch."""
    height, width = mask.shape
    values = torch.from_numpy(mask.astype(np.float32) * 255.0)[None, None]
    latent = F.interpolate(values, size=(height // factor, width // factor), mode=mode) > 127.5
    tokens = F.max_pool2d(latent.float(), kernel_size=2) > 0
    return tokens[0, 0].reshape(-1).numpy()


@pytest.mark.parametrize(("width", "height", "factor"), [(64, 64, 8), (128, 80, 8), (48, 112, 8), (256, 32, 8),
                                                         (64, 48, 4), (96, 32, 4)])
def test_token_masks_follow_the_design_rule(width: int, height: int, factor: int) -> None:
    rng = np.random.default_rng(width * 1000 + height + factor)
    masks, plain_nearest_differs = [], False
    while len(masks) < 6:
        kind = len(masks) % 3
        if kind == 0:  # sparse noise: only pixels at latent sampling positions count
            mask = rng.random((height, width)) < 0.03
        elif kind == 1:  # a box with arbitrary edges
            x1, x2 = sorted(rng.uniform(0, width, 2))
            y1, y2 = sorted(rng.uniform(0, height, 2))
            cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
            mask = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
        else:  # blobs of noise
            mask = rng.random((height // 4, width // 4)) < 0.2
            mask = np.kron(mask, np.ones((4, 4), dtype=bool))[:height, :width]
            mask &= rng.random((height, width)) < 0.7
        if _reference_tokens(mask, factor).any():
            masks.append(mask)
            plain_nearest_differs |= not np.array_equal(
                _reference_tokens(mask, factor), _reference_tokens(mask, factor, mode="nearest"))
    layout = parse_layout({"prompt": "a", "size": [width, height],
                           "entities": [{"prompt": str(i), "box": [0, 0, width, height]} for i in range(len(masks))]})

    tokens = token_masks(masks, factor, layout)

    grid = (height // (2 * factor)) * (width // (2 * factor))
    assert tokens.shape == (len(masks), grid) and tokens.dtype == bool
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(tokens[i], _reference_tokens(mask, factor), err_msg=f"mask {i}")
        latent = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None] * 255,
                               size=(height // factor, width // factor), mode="nearest-exact")[0, 0] > 127.5
        np.testing.assert_array_equal(latent_mask(mask, factor), latent.numpy())
    assert plain_nearest_differs, "these masks must tell nearest-exact from torch's plain nearest"


def test_token_order_is_row_major() -> None:
    """The token of the bottom-left 16x16 cell on a 64x48 canvas is number 2*4 + 0 = 8."""
    mask = np.zeros((H, W), dtype=bool)
    mask[32:48, 0:16] = True
    layout = _layout(entities=[{"prompt": "x", "box": [0, 32, 16, 48]}])
    tokens = token_masks([mask], 8, layout)
    assert tokens.shape == (1, 12)
    assert np.flatnonzero(tokens[0]).tolist() == [8]


def test_a_region_between_latent_centres_is_rejected_with_a_hint() -> None:
    mask = np.zeros((H, W), dtype=bool)
    mask[5:8, 5:8] = True  # the 8-px latent cells sample pixels 4, 12, ...: none inside
    layout = _layout(entities=[{"prompt": "x", "box": [5, 5, 8, 8]}])
    with pytest.raises(LayoutError) as info:
        token_masks([mask], 8, layout, "l.yaml")
    assert info.value.field == "entities[0].box"
    assert "covers no token" in info.value.expected and "16x16 px" in info.value.hint
    mask[4, 4] = True  # one pixel at a latent-cell centre is enough
    assert token_masks([mask], 8, layout).sum() == 1


# --- overrides ------------------------------------------------------------------------------------


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "layout.yaml"
    path.write_text("prompt: a desk\nsteps: 20\ncfg: 2.0\nseed: 1\nschedule: diffsynth\n")
    layout = load_layout(path, {"steps": 7, "seed": [3, 4], "cfg": None, "guidance": 1.0})
    assert layout.steps == 7  # the override wins
    assert layout.seeds == [3, 4]
    assert layout.cfg == 2.0  # None means "not given": the file's value stays
    assert layout.guidance == 1.0  # given only as an override
    assert layout.schedule == "reference"  # not overridden (`diffsynth`: the older name of `reference`)
    with pytest.raises(LayoutError, match="greater than 0"):
        load_layout(path, {"steps": 0})  # overrides are validated like the file


def test_model_override_resolves_against_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "layout.yaml").write_text("prompt: a\nmodel: some-org/some-model\n")
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    src = load_source(Path("sub/layout.yaml"), {"model": "mine", "steps": None})
    assert src.layout.model == str((tmp_path / "mine").resolve())
    assert load_source(Path("sub/layout.yaml"), {}).layout.model == "some-org/some-model"


def test_cli_seed_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--seed 5 --seed 6` replaces the file's seed: one preview per seed, named after it."""
    monkeypatch.chdir(tmp_path)
    Path("layout.yaml").write_text(
        f"prompt: a\nsize: [{W}, {H}]\nseed: 1\nentities:\n  - prompt: x\n    box: [0, 0, 32, 32]\n")
    result = CliRunner().invoke(app, ["generate", "layout.yaml", "--dry-run", "--seed", "5", "--seed", "6",
                                      "-o", "out.png"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["out-5.preview.png", "out-6.preview.png"]


# --- the resolved layout round-trips ---------------------------------------------------------------


def _every_kind(tmp_path: Path) -> dict:
    mask = np.zeros((H // 2, W // 2), dtype=np.uint8)  # half size: resized on the way in
    mask[2:10, 3:17] = 255
    _save(tmp_path / "masks" / "m.png", mask)
    colours = np.zeros((H, W, 3), dtype=np.uint8)
    colours[20:40, 30:60] = (0, 204, 68)
    _save(tmp_path / "colours.png", colours)
    return {
        "prompt": "a scene", "size": [W, H], "units": "fraction", "seed": [1, 2], "color_mask": "colours.png",
        "entities": [
            {"prompt": "a box", "box": [0.125, 0.25, 0.5, 0.75]},
            {"prompt": "a polygon", "polygon": [[0.1, 0.1], [0.9, 0.2], [0.5, 0.9]]},
            {"prompt": "a mask", "mask": "masks/m.png"},
            {"prompt": "a colour", "color": "#00cc44"},
        ],
    }


def test_inline_masks_round_trip_to_the_same_pixel_masks(tmp_path: Path) -> None:
    layout = parse_layout(_every_kind(tmp_path))
    masks = entity_masks(layout, tmp_path)

    resolved = inline_masks(layout, masks)
    data = json.loads(json.dumps(resolved.model_dump(mode="json", exclude_none=True)))  # as in the PNG
    again = parse_layout(data, "image.png")
    elsewhere = tmp_path / "elsewhere"  # no mask files here: the layout no longer needs them
    elsewhere.mkdir()
    masks_again = entity_masks(again, elsewhere)

    assert again.color_mask is None
    assert [e.region_kind for e in again.entities] == ["box", "polygon", "mask", "mask"]
    assert all(e.mask.startswith(DATA_URL_PREFIX) for e in again.entities[2:])
    assert again.entities[0].box == layout.entities[0].box  # boxes and polygons stay as written
    for before, after in zip(masks, masks_again, strict=True):
        np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(token_masks(masks_again, 8, again), token_masks(masks, 8, layout))


def test_png_rerun_reads_the_embedded_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`eligen generate image.png` re-runs the layout embedded by a previous run, without its files."""
    layout = parse_layout(_every_kind(tmp_path / "src"))
    masks = entity_masks(layout, tmp_path / "src")
    resolved = inline_masks(layout, masks).model_copy(update={"seed": 9})
    run = tmp_path / "run"
    run.mkdir()
    save_png(Image.new("RGB", (W, H)), run / "image.png",
             {"eligen_version": "0", "model": layout.model, "seed": 9,
              "layout": resolved.model_dump(mode="json", exclude_none=True)})
    assert read_png_metadata(run / "image.png")["layout"]["seed"] == 9
    monkeypatch.chdir(run)

    src = load_source(Path("image.png"), {})
    assert src.seeds == [9]
    for before, after in zip(masks, entity_masks(src.layout, src.base_dir), strict=True):
        np.testing.assert_array_equal(after, before)
    result = CliRunner().invoke(app, ["generate", "image.png", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (run / "image-rerun.preview.png").is_file()  # default name: <png stem>-rerun


@pytest.mark.parametrize(("written", "read"), [("flux", "scheduler"), ("diffsynth", "reference"),
                                                ("scheduler", "scheduler"), ("shift3", "shift3"),
                                                ("reference", "reference")])
def test_a_schedule_is_read_under_its_name_or_its_older_one(written: str, read: str) -> None:
    assert parse_layout({"prompt": "a", "schedule": written}).schedule == read

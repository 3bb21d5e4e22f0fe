"""Where each entity looks (paper D.2): entity prompts' attention over the image tokens, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.attention_maps import Block, attention_maps, block_attention, default_steps, draw_attention_grid
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.layout_warnings import region_warnings
from eligen.pipeline.regions import entity_masks, token_masks

ENTITIES = [{"prompt": "a black cat", "box": [0, 0, 64, 64]},
            {"prompt": "a tall lamp by the window", "polygon": [[64, 32], [128, 32], [128, 128], [80, 128]]}]


def _layout(**fields):
    return parse_layout({"size": [128, 128], "steps": 4, "prompt": "a cat and a lamp", "negative_prompt": "blurry",
                         "entities": ENTITIES, **fields})


@pytest.mark.parametrize(("block", "entity_tokens"), [("dual:-1", "max"), ("single:0", "auto"), ("dual:0", 24)])
def test_an_entity_attends_to_nothing_outside_its_region(tiny_pipe: EligenPipeline, block: str,
                                                         entity_tokens: object) -> None:
    layout = _layout(entity_tokens=entity_tokens)
    regions = token_masks(entity_masks(layout, Path(".")), tiny_pipe.scale_factor, layout)
    positive, negative = tiny_pipe.prepare(layout)
    result = attention_maps(tiny_pipe, layout, positive, negative, 3, [1, 3, 4], Block.parse(block))
    assert result.steps == [1, 3, 4] and result.maps.shape == (2, 3, 8, 8)  # 16-px tokens
    for i, region in enumerate(regions):
        values = result.maps[i].reshape(3, -1)
        assert (values[:, ~region] == 0).all()  # the mask forbids these keys: exp(-inf) is exactly 0
        assert (values[:, region] > 0).all()
        # the rest of each row's probability is on its own prompt's tokens; the image part is a share of 1
        assert (values.sum(axis=1) <= 1 + 1e-5).all()  # float32 sums of 64 values


def test_the_extra_pass_leaves_the_model_as_it_was(tiny_pipe: EligenPipeline) -> None:
    layout = _layout()
    positive, negative = tiny_pipe.prepare(layout)
    layer = block_attention(tiny_pipe.transformer, Block())
    processor = layer.processor
    before = tiny_pipe.sample(layout, positive, negative, 5)
    attention_maps(tiny_pipe, layout, positive, negative, 5, default_steps(layout.steps))
    assert layer.processor is processor
    assert (tiny_pipe.sample(layout, positive, negative, 5) == before).all()


def test_bad_requests_are_refused(tiny_pipe: EligenPipeline) -> None:
    layout = _layout()
    positive, negative = tiny_pipe.prepare(layout)
    with pytest.raises(ValueError, match="expected steps from 1 to 4"):
        attention_maps(tiny_pipe, layout, positive, negative, 0, [5])
    with pytest.raises(ValueError, match="expected a dual block index from -2 to 1, got 3"):
        attention_maps(tiny_pipe, layout, positive, negative, 0, [1], Block("dual", 3))
    with pytest.raises(ValueError, match="expected a block as dual:N or single:N"):
        Block.parse("last")
    assert default_steps(50) == [12, 25, 38, 50] and default_steps(2) == [1, 2]


def test_the_grid_has_a_row_per_entity_and_a_column_per_step(tiny_pipe: EligenPipeline) -> None:
    layout = _layout()
    positive, negative = tiny_pipe.prepare(layout)
    result = attention_maps(tiny_pipe, layout, positive, negative, 1, [2, 4])
    grid = draw_attention_grid(Image.new("RGB", (128, 128)), layout, result)
    assert grid.size == (180 + 2 * (128 + 4), 18 + 2 * (128 + 4))


def test_generate_attention_maps_writes_the_grid_beside_the_image(tiny_model: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    layout = tmp_path / "scene.yaml"
    layout.write_text(f"model: {tiny_model}\nsize: [128, 128]\nsteps: 3\nseed: [1, 2]\nprompt: a cat\n"
                      "entities:\n  - prompt: a cat\n    box: [0, 0, 64, 64]\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["generate", str(layout), "--attention-maps", "--attention-step", "3"])
    assert result.exit_code == 0, result.output
    for seed in (1, 2):
        grid = Image.open(tmp_path / f"scene-{seed}.attention.png")
        assert grid.size == (180 + 128 + 4, 18 + 128 + 4)
    refused = CliRunner().invoke(app, ["generate", str(layout), "--attention-step", "3", "--overwrite"])
    assert refused.exit_code == 2 and "given without --attention-maps" in refused.output


def test_region_warnings_small_and_shared_tokens(tmp_path: Path) -> None:
    layout = parse_layout({"size": [64, 64], "prompt": "p", "entities": [
        {"prompt": "a", "box": [0, 0, 10, 10]}, {"prompt": "b", "box": [4, 4, 40, 40]}, {"prompt": "c",
                                                                                     "box": [48, 48, 64, 64]}]})
    masks = entity_masks(layout, tmp_path)
    warnings = region_warnings(layout, masks, token_masks(masks, 8, layout), 8)  # 16-px tokens
    assert [(w.field, w.message) for w in warnings] == [
        ("entities[0].box", "the region covers 100 px, less than one 16x16-px token; the model sees it as 1 whole "
                            "token"),
        ("entities[1].box", "shares 1 token with entities[0]: both prompts reach them (allowed; regions may overlap)"),
    ]
    (tmp_path / "l.yaml").write_text(layout.model_dump_json())
    result = CliRunner().invoke(app, ["preview", str(tmp_path / "l.yaml"), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0
    # the CLI says the same, one line per kind of warning
    assert f"warning: {tmp_path / 'l.yaml'}: entities: 1 region smaller than one token (16x16 px on this model): " \
        "entities[0]" in result.output
    assert "regions sharing tokens (both prompts reach them; allowed): entities[1] with entities[0] (1)" \
        in result.output

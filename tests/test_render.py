"""The one render entry point: model defaults applied for every caller, the metadata the CLI writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.layout import parse_edits, parse_layout
from eligen.pipeline.render import SourceImage, prepare_render, render
from eligen.pipeline.train.validation import prepare_cases

runner = CliRunner()
ENTITIES = [{"prompt": "a red cup", "box": [0, 0, 32, 32]}]


def test_a_qwen_layout_gets_the_familys_defaults_from_every_caller(tiny_qwen_pipe, tmp_path: Path, one_thread) -> None:
    layout = parse_layout({"model": str(tiny_qwen_pipe.model), "size": [64, 64], "prompt": "a table", "loras": [],
                           "entities": ENTITIES})
    assert (layout.steps, layout.cfg, layout.negative_prompt) == (50, 3.0, "")  # the schema's: FLUX's
    prepared = prepare_render(tiny_qwen_pipe, layout)
    assert (prepared.sampled.steps, prepared.sampled.cfg, prepared.sampled.negative_prompt) == (40, 4.0, " ")
    [case] = prepare_cases(tiny_qwen_pipe, [(layout, tmp_path, "validation")], 32)
    assert (case.sampled.steps, case.sampled.cfg, case.sampled.negative_prompt) == (40, 4.0, " ")
    edits = parse_edits({"model": str(tiny_qwen_pipe.model), "prompt": "a house", "loras": [],
                         "entities": ENTITIES}, (64, 64))
    image = SourceImage(Image.new("RGB", (64, 64), (10, 200, 10)), "green.png", "0" * 64)
    inpainting = prepare_render(tiny_qwen_pipe, edits, source_image=image)
    assert (inpainting.sampled.steps, inpainting.sampled.cfg, inpainting.sampled.negative_prompt) == (40, 4.0, " ")
    set_here = layout.model_copy(update={"steps": 2, "cfg": 1.0})  # what the layout sets wins
    assert (prepare_render(tiny_qwen_pipe, set_here).sampled.steps, set_here.cfg) == (2, 1.0)


def test_render_gives_the_bytes_and_metadata_eligen_generate_writes(tiny_model: Path, tiny_pipe, tmp_path: Path,
                                                                    one_thread) -> None:
    data = {"model": str(tiny_model), "size": [64, 64], "prompt": "a table", "steps": 2, "seed": [3, 4],
            "loras": [], "entities": ENTITIES}
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(data))
    assert runner.invoke(app, ["generate", str(path), "-o", str(tmp_path / "cli.png")]).exit_code == 0
    results = list(render(tiny_pipe, parse_layout(data), base_dir=tmp_path))
    assert [r.seed for r in results] == [3, 4]
    for result in results:
        with Image.open(tmp_path / f"cli-{result.seed}.png") as written:
            assert json.loads(written.text["eligen"]) == result.metadata
            assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(result.image))
    recorded = results[0].metadata["layout"]
    length = tiny_pipe.max_sequence_length(parse_layout(data))
    assert (recorded["seed"], recorded["loras"], recorded["max_sequence_length"]) == (3, [], length)

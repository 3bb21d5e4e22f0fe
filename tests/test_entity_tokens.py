"""The entity token budget (`entity_tokens: max | auto | N`): what each keeps, and that the kept tokens are exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.generate import EligenPipeline, entity_lengths
from eligen.pipeline.layout import LayoutError, parse_layout
from eligen.pipeline.outputs import read_png_metadata

SIZE = [128, 96]
ENTITIES = [{"prompt": "a red cup", "box": [0, 0, 64, 96]},
            {"prompt": "an old book on the table with a blue hat", "box": [48, 16, 128, 80]}]


def _layout(**fields: object):
    return parse_layout({"size": SIZE, "steps": 2, "prompt": "a photo of a table", "negative_prompt": "dark",
                         "entities": ENTITIES, **fields})


@pytest.fixture
def regions(tiny_pipe: EligenPipeline) -> np.ndarray:
    return tiny_pipe.token_regions(_layout(), Path("."))


def test_layout_accepts_max_auto_and_a_number() -> None:
    assert _layout().entity_tokens == "max"
    assert _layout(entity_tokens="auto").entity_tokens == "auto"
    assert _layout(entity_tokens=12).entity_tokens == 12
    for wrong in (0, 1025, "some", 3.0, True, "12"):
        with pytest.raises(LayoutError, match="entity_tokens: expected max, auto or a number"):
            _layout(entity_tokens=wrong)


def test_auto_keeps_each_entity_s_own_tokens_of_the_padded_encoding(tiny_pipe, regions) -> None:
    encode = tiny_pipe.prompt_encoder(tiny_pipe.max_sequence_length(_layout()))
    counts = [encode.token_count(e["prompt"]) for e in ENTITIES]
    ids = tiny_pipe.family.pipe.tokenizer_2(ENTITIES[0]["prompt"]).input_ids
    assert counts[0] == len(ids) and ids[-1] == tiny_pipe.family.pipe.tokenizer_2.eos_token_id  # the end token counts
    assert counts[0] < counts[1] < encode.max_sequence_length

    positive, _ = tiny_pipe.conditionings(_layout(entity_tokens="auto"), regions)
    reference, _ = tiny_pipe.conditionings(_layout(), regions)
    length = encode.max_sequence_length
    assert positive.prompt_embeds.shape[1] == sum(counts) + length
    first, second, glob = positive.prompt_embeds.split([*counts, length], dim=1)
    # T5 ran on the padded prompt: the kept tokens are bit for bit the reference's
    assert torch.equal(first, reference.prompt_embeds[:, : counts[0]])
    assert torch.equal(second, reference.prompt_embeds[:, length: length + counts[1]])
    assert torch.equal(glob, reference.prompt_embeds[:, 2 * length:])
    # and the mask follows the rule with these group lengths
    allowed = positive.attention_mask[0, 0] == 0
    assert allowed[: counts[0], : counts[0]].all() and not allowed[: counts[0], counts[0]: sum(counts)].any()
    image = allowed[: counts[0], sum(counts) + length:]
    assert torch.equal(image, torch.from_numpy(regions[0])[None].expand_as(image))


def test_padding_changes_the_real_tokens_embeddings(tiny_pipe) -> None:
    """Why `auto` slices the padded encoding instead of encoding at the prompt's own length: FLUX runs T5
    without an attention mask, so the padding tokens take part in the real tokens' attention."""
    encode = tiny_pipe.prompt_encoder(32)
    prompt = ENTITIES[1]["prompt"]
    n = encode.token_count(prompt)
    unpadded = tiny_pipe.prompt_encoder(n)(prompt)[0]
    difference = (unpadded - encode(prompt)[0][:, :n]).abs().max().item()
    assert difference > 1e-3 * unpadded.abs().max().item()


def test_a_number_pads_every_entity_to_it_and_refuses_longer_prompts(tiny_pipe, regions) -> None:
    positive, negative = tiny_pipe.conditionings(_layout(entity_tokens=16, regions_on_negative=True), regions)
    reference, _ = tiny_pipe.conditionings(_layout(), regions)
    length = tiny_pipe.max_sequence_length(_layout())
    assert positive.prompt_embeds.shape[1] == 2 * 16 + length
    assert torch.equal(positive.prompt_embeds[:, 16:32], reference.prompt_embeds[:, length: length + 16])
    assert negative is not None and negative.prompt_embeds.shape[1] == 2 * 16 + length

    with pytest.raises(LayoutError, match=r"entities\[1\]\.prompt: expected at most 4 text tokens") as error:
        tiny_pipe.conditionings(_layout(entity_tokens=4), regions)
    assert "use auto" in str(error.value)
    with pytest.raises(LayoutError, match=r"entity_tokens: expected at most this model's text tokens per prompt group "
                       r"\(max_sequence_length 32\), got 64"):
        tiny_pipe.conditionings(_layout(entity_tokens=64), regions)
    assert _layout(entity_tokens=1024).entity_tokens == 1024  # a Qwen-Image group holds 1024: the family says


def test_a_qwen_image_entity_may_keep_more_than_flux_s_512_tokens(tiny_qwen_pipe) -> None:
    layout = parse_layout({"model": str(tiny_qwen_pipe.model), "size": [64, 64], "prompt": "a table", "loras": [],
                           "entity_tokens": 600, "entities": [{"prompt": "a red cup", "box": [0, 0, 32, 32]}]})
    encode = tiny_qwen_pipe.prompt_encoder(1024)
    assert entity_lengths(encode, layout.entity_tokens, ["a red cup"]) == [600]


def test_regions_on_negative_keep_the_negative_prompt_s_own_tokens(tiny_pipe, regions) -> None:
    _, negative = tiny_pipe.conditionings(_layout(entity_tokens="auto", regions_on_negative=True), regions)
    encode = tiny_pipe.prompt_encoder(32)
    assert negative is not None
    assert negative.prompt_embeds.shape[1] == 2 * encode.token_count("dark") + 32


def test_auto_generates_and_differs_from_max_only_by_the_padding(tiny_pipe) -> None:
    layout = _layout(seed=3)
    exact = tiny_pipe.generate(layout, [3])[0]
    auto = tiny_pipe.generate(layout.model_copy(update={"entity_tokens": "auto"}), [3])[0]
    assert exact.size == auto.size == tuple(SIZE)
    assert not np.array_equal(np.asarray(exact), np.asarray(auto))  # the reference's padding tokens do act


def test_cli_entity_tokens_and_attention_reach_the_layout(tiny_model: Path, tmp_path: Path) -> None:
    layout = tmp_path / "scene.yaml"
    layout.write_text(f"model: {tiny_model}\nsize: {SIZE}\nsteps: 2\nseed: 1\nprompt: a table\nentities:\n"
                      "  - {prompt: a red cup, box: [0, 0, 64, 96]}\n")
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, ["generate", str(layout), "-o", str(out), "--entity-tokens", "auto",
                                      "--attention", "split", "--batch-cfg"])
    assert result.exit_code == 0, result.output
    written = read_png_metadata(out)["layout"]
    assert written["entity_tokens"] == "auto" and written["attention"] == "split"
    assert np.asarray(Image.open(out)).shape == (SIZE[1], SIZE[0], 3)

    result = CliRunner().invoke(app, ["generate", str(layout), "-o", str(tmp_path / "b.png"), "--entity-tokens", "2"])
    assert result.exit_code == 2
    assert "entities[0].prompt: expected at most 2 text tokens" in result.output

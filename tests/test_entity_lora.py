"""LoRAs per entity on both families' tiny models: the exact token rule at block level, scale 0, locality in the
image, loading once, and bad input through the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.entity_lora import active_tokens, token_stream
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import LayoutError, parse_layout
from eligen.pipeline.layout_warnings import LayoutWarning
from eligen.pipeline.lora import apply_loras, remove_loras
from eligen.pipeline.outputs import read_png_metadata
from eligen.pipeline.train.lora import block_linears

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAMILIES = ["tiny_pipe", "tiny_qwen_pipe"]
# Image-level locality at the default CFG (each family's): the mean pixel change from one entity's LoRA inside its
# region over the mean change outside it. Measured on these tiny random models (printed with -s): FLUX 2.95 / 4.23,
# Qwen-Image 3.96 / 4.78 for the two entities (seeded, so the same every run); attention carries some of the change
# to other tokens, and the VAE decoder spreads a token's change over its neighbours.
LOCALITY_FLOOR = 2.0


def lora_file(transformer: torch.nn.Module, path: Path, seed: int, rank: int = 4, per_token: bool = True) -> str:
    """A diffusers/peft-style LoRA of random factors on the blocks' Linears (only those acting per token unless
    `per_token` is False); large enough to change a tiny model's image visibly."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in block_linears(transformer):
        if per_token and token_stream(name) is None:
            continue
        linear = transformer.get_submodule(name)
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=generator) \
            / linear.in_features ** 0.5
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=generator) * 0.5
    save_file(tensors, str(path))
    return str(path)


def two_entities(pipe: EligenPipeline, loras: tuple[list[dict], list[dict]] | None = None, overlap: bool = False,
                 **extra: Any) -> Any:
    """A 128x128 layout, entity 0 on the left half and entity 1 on the right (overlapping the middle quarter)."""
    right = 32 if overlap else 64
    entities = [{"prompt": "a red circle", "box": [0, 0, 64 + (32 if overlap else 0), 128]},
                {"prompt": "a big blue square shape", "box": [right, 0, 128, 128]}]
    for entity, specs in zip(entities, loras or ([], []), strict=True):
        if specs:
            entity["loras"] = specs
    data = {"model": pipe.model, "size": [128, 128], "prompt": "shapes on a plain ground", "steps": 4, "loras": [],
            "entities": entities, **extra}
    return parse_layout(data)


def image(pipe: EligenPipeline, layout: Any) -> np.ndarray:
    return np.asarray(pipe.generate(layout, [0])[0]).astype(np.float64)


@pytest.fixture(params=FAMILIES)
def pipe(request: pytest.FixtureRequest) -> Iterator[EligenPipeline]:
    pipe = request.getfixturevalue(request.param)
    yield pipe
    pipe.prepare(two_entities(pipe))  # leave the shared model without entity LoRAs


def test_layout_takes_entity_loras() -> None:
    layout = parse_layout({"prompt": "p", "entities": [{"prompt": "a", "box": [0, 0, 8, 8],
                                                        "loras": [{"path": "a.safetensors", "scale": 0.5}]}]})
    assert layout.entities[0].loras[0].scale == 0.5
    with pytest.raises(LayoutError) as bad:
        parse_layout({"prompt": "p", "entities": [{"prompt": "a", "box": [0, 0, 8, 8],
                                                   "loras": [{"path": "a.safetensors", "scale": "strong"}]}]})
    assert bad.value.field == "entities[0].loras[0].scale" and "number" in bad.value.expected
    with pytest.raises(LayoutError) as unknown:
        parse_layout({"prompt": "p", "entities": [{"prompt": "a", "box": [0, 0, 8, 8],
                                                   "loras": [{"path": "a.safetensors", "weight": 1}]}]})
    assert unknown.value.field == "entities[0].loras[0].weight" and "path, file, scale" in str(unknown.value)


def test_scale_zero_is_bit_identical(pipe: EligenPipeline, tmp_path: Path) -> None:
    path = lora_file(pipe.transformer, tmp_path / "a.safetensors", seed=1)
    without = image(pipe, two_entities(pipe))
    zero = image(pipe, two_entities(pipe, ([{"path": path, "scale": 0.0}], [])))
    assert np.array_equal(without, zero)
    assert not np.array_equal(without, image(pipe, two_entities(pipe, ([{"path": path}], []))))


def _captured(pipe: EligenPipeline, layout: Any, blocks: tuple[str, ...]) -> list[tuple[str, int, torch.Tensor, Any]]:
    """(module, branch, input, output) of every hooked Linear in `blocks` during one pass of each CFG branch."""
    positive, negative = pipe.prepare(layout)
    latent_h, latent_w = pipe.latent_grid(layout)
    velocity = pipe.family.velocity(pipe.transformer, latent_h, latent_w, layout.guidance)
    x = torch.randn(1, (latent_h // 2) * (latent_w // 2), pipe.family.latent_channels * 4,
                    generator=torch.Generator().manual_seed(3))
    found: list[tuple[str, int, torch.Tensor, Any]] = []
    handles = []
    branch = [0]
    for name, module in pipe.transformer.named_modules():
        if name.startswith(blocks) and hasattr(module, "eligen_entity_down_0"):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: found.append((name, branch[0], args[0].detach(), out.detach()))))
    try:
        with torch.no_grad():
            for branch[0], cond in enumerate((positive, negative)):
                with active_tokens(cond.lora_tokens):
                    velocity(x, torch.tensor(500.0), cond)
    finally:
        for handle in handles:
            handle.remove()
    return found, positive, negative


def _owned(length: int, regions: np.ndarray, text: int, groups: tuple[int, ...] | None, entity: int) -> torch.Tensor:
    """(length,) bool: the tokens of a sequence of `length` that belong to `entity` (its region's image tokens and,
    where the branch has entity prompt groups, its own prompt's tokens): image, text or joint [text | image]."""
    n_image = regions.shape[1]
    image = torch.from_numpy(regions[entity])
    prompt = torch.zeros(text, dtype=torch.bool)
    if groups is not None:
        start = sum(groups[:entity])
        prompt[start:start + groups[entity]] = True
    if length == n_image:
        return image
    if length == text:
        return prompt
    assert length == text + n_image
    return torch.cat([prompt, image])


@pytest.mark.parametrize("regions_on_negative", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_delta_exactly_on_the_entity_tokens_and_equal_to_the_global_lora_there(
        family: str, regions_on_negative: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """With `regions_on_negative` the negative branch has entity prompt groups too, whose tokens are the entity's."""
    pipe = request.getfixturevalue(family)
    transformer = pipe.transformer
    files = [lora_file(transformer, tmp_path / f"{n}.safetensors", seed=n) for n in (1, 2)]
    scales = (0.7, 1.3)
    layout = two_entities(pipe, ([{"path": files[0], "scale": scales[0]}], [{"path": files[1], "scale": scales[1]}]),
                          overlap=True, regions_on_negative=regions_on_negative)
    blocks = ("transformer_blocks.0.", "single_transformer_blocks.0.")
    try:
        found, positive, negative = _captured(pipe, layout, blocks)
        regions = pipe.token_regions(layout, Path("."))
        assert regions[0].any() and regions[1].any() and (regions[0] & regions[1]).any()  # an overlap
        # the global LoRA's contribution of each file, on the same inputs (the entity hooks add nothing without
        # active token weights)
        globals_ = []
        for path, scale in zip(files, scales, strict=True):
            apply_loras(transformer, [(pipe.family.load_lora(path), scale)])
            with torch.no_grad():
                globals_.append([transformer.get_submodule(name)(x) for name, _, x, _ in found])
            remove_loras(transformer)
    finally:
        pipe.prepare(two_entities(pipe))
    streams = {token_stream(name) for name, *_ in found}
    assert streams == ({"image", "text", "joint"} if family == "tiny_pipe" else {"image", "text"})
    inside = 0
    for index, (name, branch, x, out) in enumerate(found):
        module = transformer.get_submodule(name)
        contribution = out - F.linear(x, module.weight, module.bias)
        cond = (positive, negative)[branch]
        owned = [_owned(x.shape[1], regions, cond.prompt_embeds.shape[1], cond.group_lengths, e) for e in (0, 1)]
        expected = sum((g[index] - F.linear(x, module.weight, module.bias)) * o[None, :, None]
                       for g, o in zip((globals_[0], globals_[1]), owned, strict=True))
        outside = ~(owned[0] | owned[1])
        assert torch.equal(contribution[:, outside], torch.zeros_like(contribution[:, outside])), name
        # float32 both ways; only the order of the scale's multiplication differs (rounding of a few ulps)
        torch.testing.assert_close(contribution, expected, rtol=1e-5, atol=1e-6)
        inside += int((contribution.abs() > 0).any(dim=-1).sum())
        if branch == 1 and x.shape[1] != regions.shape[1]:
            # the negative branch's text tokens are an entity's only where it has entity prompt groups
            assert owned[0][: cond.prompt_embeds.shape[1]].any() == regions_on_negative
    assert inside > 0
    assert {b for _, b, *_ in found} == {0, 1}


def test_two_entities_two_loras_change_their_own_regions(pipe: EligenPipeline, tmp_path: Path) -> None:
    files = [lora_file(pipe.transformer, tmp_path / f"{n}.safetensors", seed=n) for n in (1, 2)]
    base = image(pipe, two_entities(pipe))
    both = image(pipe, two_entities(pipe, ([{"path": files[0]}], [{"path": files[1]}])))
    assert not np.array_equal(base, both)
    ratios = []
    for entity, (inside, outside) in enumerate(((slice(0, 64), slice(64, 128)), (slice(64, 128), slice(0, 64)))):
        specs = ([{"path": files[0]}], []) if entity == 0 else ([], [{"path": files[1]}])
        change = np.abs(image(pipe, two_entities(pipe, specs)) - base).mean(axis=2)
        ratios.append(change[:, inside].mean() / change[:, outside].mean())
    print(f"{pipe.family.defaults.name}: change inside / outside at cfg {pipe.family.defaults.cfg}: "
          + ", ".join(f"{r:.2f}" for r in ratios))
    assert min(ratios) > LOCALITY_FLOOR


def test_batched_cfg_gives_the_same_latents(pipe: EligenPipeline, tmp_path: Path) -> None:
    """Both CFG branches as one batch (the text of the shorter padded with tokens of no entity) = one at a time."""
    files = [lora_file(pipe.transformer, tmp_path / f"{n}.safetensors", seed=n) for n in (1, 2)]
    layout = two_entities(pipe, ([{"path": files[0]}], [{"path": files[1], "scale": 0.6}]), overlap=True)
    positive, negative = pipe.prepare(layout)
    separate = pipe.sample(layout, positive, negative, 0)
    together = pipe.sample(layout, positive, negative, 0, batch_cfg=True)
    plain = pipe.prepare(two_entities(pipe))
    assert not torch.equal(separate, pipe.sample(layout, *plain, 0))
    # float32; batching changes only the matmuls' blocking (the same bound as tests/test_performance_backends.py)
    assert (together - separate).abs().max().item() <= 1e-5 * separate.abs().max().item()


def test_one_file_loaded_once_for_every_entity(tiny_pipe: EligenPipeline, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = lora_file(tiny_pipe.transformer, tmp_path / "a.safetensors", seed=1)
    loads = []
    load = tiny_pipe.family.load_lora
    monkeypatch.setattr(tiny_pipe.family, "load_lora", lambda p: loads.append(p) or load(p))
    try:
        tiny_pipe.prepare(two_entities(tiny_pipe, ([{"path": path}], [{"path": path, "scale": 0.5}])))
        tiny_pipe.prepare(two_entities(tiny_pipe, ([{"path": path, "scale": 2.0}], [{"path": path}])))
        module = tiny_pipe.transformer.get_submodule("transformer_blocks.0.attn.to_q")
        assert module.eligen_entity_down_0.shape[0] == 4 and not hasattr(module, "eligen_entity_down_1")  # one copy
    finally:
        tiny_pipe.prepare(two_entities(tiny_pipe))
    assert loads == [path]
    assert not hasattr(module, "eligen_entity_down_0")


def test_layers_per_sample_are_left_out_with_a_warning(tiny_pipe: EligenPipeline, tmp_path: Path) -> None:
    path = lora_file(tiny_pipe.transformer, tmp_path / "all.safetensors", seed=1, per_token=False)
    try:
        with pytest.warns(LayoutWarning, match="one vector per image"):
            tiny_pipe.prepare(two_entities(tiny_pipe, ([{"path": path}], [])))
        assert not hasattr(tiny_pipe.transformer.get_submodule("transformer_blocks.0.norm1.linear"),
                           "eligen_entity_down_0")
    finally:
        tiny_pipe.prepare(two_entities(tiny_pipe))


# ---------------------------------------------------------------- the command line


def _layout_file(folder: Path, model: Path, loras: list[dict] | None = None, name: str = "scene") -> Path:
    entity = {"prompt": "a red circle", "box": [0, 0, 64, 128]}
    if loras is not None:
        entity["loras"] = loras
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps({"model": str(model), "size": [128, 128], "prompt": "shapes", "steps": 2, "seed": 3,
                                "loras": [], "entities": [entity, {"prompt": "a blue square",
                                                                   "box": [64, 0, 128, 128]}]}))
    return path


def _bad(args: list[str], folder: Path) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not list(folder.glob("*.png"))
    return result.output


def test_cli_entity_lora_bad_input_exits_2_writing_nothing(tiny_model: Path, tmp_path: Path) -> None:
    out = ["-o", str(tmp_path / "out.png")]
    missing = _layout_file(tmp_path, tiny_model, [{"path": "nowhere.safetensors"}], "missing")
    assert "entities[0].loras[0]" in _bad(["generate", str(missing), *out], tmp_path)

    unfit = tmp_path / "unfit.safetensors"
    save_file({"transformer.transformer_blocks.9.attn.to_q.lora_A.weight": torch.zeros(2, 8),
               "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": torch.zeros(8, 2)}, str(unfit))
    layout = _layout_file(tmp_path, tiny_model)
    message = _bad(["generate", str(layout), "--entity-lora", f"1={unfit}", *out], tmp_path)
    assert "entities[1].loras[0]" in message and "match no layer" in message

    message = _bad(["generate", str(layout), "--entity-lora", f"0={unfit}:strong", *out], tmp_path)
    assert "--entity-lora" in message and "number" in message
    scale = _layout_file(tmp_path, tiny_model, [{"path": str(unfit), "scale": "strong"}], "scale")
    assert "entities[0].loras[0].scale" in _bad(["generate", str(scale), *out], tmp_path)

    message = _bad(["generate", str(layout), "--entity-lora", f"5={unfit}", *out], tmp_path)
    assert "entities[5]" in message and "2 entities" in message

    good = lora_file(EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32").transformer,
                     tmp_path / "good.safetensors", seed=1)
    message = _bad(["generate", str(layout), "--entity-lora", f"0={good}", "--fuse-loras", *out], tmp_path)
    assert "entities[0].loras" in message and "--fuse-loras" in message

    image_path = tmp_path / "source" / "source.png"
    image_path.parent.mkdir()
    Image.new("RGB", (128, 128), "white").save(image_path)
    edits = tmp_path / "edits.yaml"
    edits.write_text(json.dumps({"model": str(tiny_model), "prompt": "shapes", "steps": 2, "loras": [],
                                 "entities": [{"prompt": "a red circle", "box": [0, 0, 64, 64]}]}))
    message = _bad(["inpaint", str(image_path), str(edits), "--entity-lora", f"0={tmp_path / 'no.safetensors'}",
                    "-o", str(tmp_path / "edited.png")], tmp_path)
    assert "entities[0].loras[0]" in message


def test_cli_records_entity_loras_and_reruns_the_png(tiny_model: Path, tmp_path: Path) -> None:
    pipe = EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32")
    good = lora_file(pipe.transformer, tmp_path / "good.safetensors", seed=1)
    layout = _layout_file(tmp_path, tiny_model)
    first = tmp_path / "first.png"
    result = runner.invoke(app, ["generate", str(layout), "--entity-lora", f"1={good}:0.8", "-o", str(first)])
    assert result.exit_code == 0, result.output
    recorded = read_png_metadata(first)["layout"]["entities"]
    assert recorded[1]["loras"] == [{"path": good, "scale": 0.8}] and "loras" not in recorded[0]
    again = tmp_path / "again.png"
    result = runner.invoke(app, ["generate", str(first), "-o", str(again)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    plain = tmp_path / "plain.png"
    assert runner.invoke(app, ["generate", str(layout), "-o", str(plain)]).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(plain)))

    # a LoRA relative to the layout file is recorded absolute: the PNG re-runs from another folder
    relative = _layout_file(tmp_path, tiny_model, [{"path": "good.safetensors", "scale": 0.5}], "relative")
    moved = tmp_path / "elsewhere" / "moved.png"
    moved.parent.mkdir()
    assert runner.invoke(app, ["generate", str(relative), "-o", str(moved)]).exit_code == 0
    assert read_png_metadata(moved)["layout"]["entities"][0]["loras"] == [{"path": good, "scale": 0.5}]
    result = runner.invoke(app, ["generate", str(moved), "-o", str(tmp_path / "moved-again.png")])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(moved)), np.asarray(Image.open(tmp_path / "moved-again.png")))


def test_studio_takes_only_its_own_loras_for_entities(tiny_model: Path) -> None:
    """An entity's LoRAs posted from the page are checked against the studio's start-up list like the layout's:
    local files and hub LoRAs alike must be on it."""
    from eligen.studio.inputs import browser_layout
    from eligen.studio.paths import Allowed

    allowed = Allowed(loras=("/models/style.safetensors", "user/repo/char.safetensors"))
    data = {"prompt": "shapes", "entities": [{"prompt": "a red circle", "box": [0, 0, 64, 64],
                                              "loras": [{"path": "/models/style.safetensors", "scale": 0.5},
                                                        {"path": "user/repo/char.safetensors"}]}]}
    layout = browser_layout(data, str(tiny_model), allowed)
    assert [(s.path, s.file) for s in layout.entities[0].loras] == [("/models/style.safetensors", None),
                                                                    ("user/repo", "char.safetensors")]
    for refused_path in ("/etc/secret.safetensors", "other/repo/char.safetensors"):
        data["entities"][0]["loras"] = [{"path": refused_path}]
        with pytest.raises(LayoutError) as refused:
            browser_layout(data, str(tiny_model), allowed)
        assert refused.value.field == "entities[0].loras[0].path" and "started with" in refused.value.expected

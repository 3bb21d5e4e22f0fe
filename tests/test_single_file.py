"""Single-file transformer checkpoints (`transformer:` / `--transformer`): BFL and diffusers key layouts, exact
weights, identical images, diffusers parity at FLUX.1-dev's width, and clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.families.flux.single_file import bfl_shapes, bfl_to_diffusers, diffusers_shapes
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import LayoutError, parse_layout
from eligen.pipeline.model_info import ModelLoadError
from eligen.pipeline.outputs import read_png_metadata
from eligen.sources import load_source, resolve_transformer

runner = CliRunner()

# transformer/config.json of black-forest-labs/FLUX.1-dev (FLUX.1-schnell: the same without guidance embedding)
FLUX_DEV = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56],
            "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24,
            "num_layers": 19, "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768}
LAYOUT = {"size": [64, 64], "steps": 2, "seed": 0, "prompt": "a boat", "negative_prompt": "blurry",
          "entities": [{"prompt": "a red boat", "box": [0, 0, 32, 64]}]}


def to_bfl(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A diffusers FLUX transformer state dict in the original BFL single-file layout (written independently of
    eligen's converter): fused qkv = cat(q, k, v) rows, single-block linear1 = cat(q, k, v, proj_mlp), RMSNorm
    `.scale`, and the final adaLN in (shift, scale) order where diffusers has (scale, shift)."""
    out: dict[str, torch.Tensor] = {}
    used: list[str] = []

    def put(name: str, *parts: str, swap: bool = False) -> None:
        for suffix in (".weight", ".bias"):
            used.extend(p + suffix for p in parts)
            tensor = torch.cat([state_dict[p + suffix] for p in parts], dim=0)
            if swap:
                scale, shift = tensor.chunk(2, dim=0)
                tensor = torch.cat([shift, scale], dim=0)
            out[prefix + name + suffix] = tensor.clone()

    def norm(name: str, part: str) -> None:
        used.append(part + ".weight")
        out[prefix + name + ".scale"] = state_dict[part + ".weight"].clone()

    put("img_in", "x_embedder")
    put("txt_in", "context_embedder")
    put("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    put("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    put("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    put("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "time_text_embed.guidance_embedder.linear_1.weight" in state_dict:
        put("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        put("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    i = 0
    while f"transformer_blocks.{i}.attn.to_q.weight" in state_dict:
        d, b = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        put(d + "img_mod.lin", b + "norm1.linear")
        put(d + "txt_mod.lin", b + "norm1_context.linear")
        put(d + "img_attn.qkv", b + "attn.to_q", b + "attn.to_k", b + "attn.to_v")
        put(d + "txt_attn.qkv", b + "attn.add_q_proj", b + "attn.add_k_proj", b + "attn.add_v_proj")
        norm(d + "img_attn.norm.query_norm", b + "attn.norm_q")
        norm(d + "img_attn.norm.key_norm", b + "attn.norm_k")
        norm(d + "txt_attn.norm.query_norm", b + "attn.norm_added_q")
        norm(d + "txt_attn.norm.key_norm", b + "attn.norm_added_k")
        put(d + "img_attn.proj", b + "attn.to_out.0")
        put(d + "txt_attn.proj", b + "attn.to_add_out")
        put(d + "img_mlp.0", b + "ff.net.0.proj")
        put(d + "img_mlp.2", b + "ff.net.2")
        put(d + "txt_mlp.0", b + "ff_context.net.0.proj")
        put(d + "txt_mlp.2", b + "ff_context.net.2")
        i += 1
    j = 0
    while f"single_transformer_blocks.{j}.attn.to_q.weight" in state_dict:
        s, b = f"single_blocks.{j}.", f"single_transformer_blocks.{j}."
        put(s + "modulation.lin", b + "norm.linear")
        put(s + "linear1", b + "attn.to_q", b + "attn.to_k", b + "attn.to_v", b + "proj_mlp")
        norm(s + "norm.query_norm", b + "attn.norm_q")
        norm(s + "norm.key_norm", b + "attn.norm_k")
        put(s + "linear2", b + "proj_out")
        j += 1
    put("final_layer.linear", "proj_out")
    put("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    assert sorted(used) == sorted(state_dict), "every diffusers parameter has exactly one BFL home"
    return out


@pytest.fixture(scope="module")
def original(tiny_model: Path) -> dict[str, torch.Tensor]:
    """The tiny folder's own transformer weights, read straight from its file."""
    return load_file(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def bfl_file(original: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("single-file") / "tiny-bfl.safetensors"
    save_file(to_bfl(original), path)
    return path


def _assert_same_weights(pipe: EligenPipeline, original: dict[str, torch.Tensor]) -> None:
    loaded = pipe.transformer.state_dict()
    assert loaded.keys() == original.keys()
    for key, tensor in original.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def _image(pipe: EligenPipeline) -> np.ndarray:
    return np.asarray(pipe.generate(parse_layout(LAYOUT), [0])[0])


def test_bfl_file_loads_to_the_exact_weights_offline(tiny_model: Path, bfl_file: Path, original: dict,
                                                     tiny_pipe: EligenPipeline, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # a local model folder needs no download
    pipe = EligenPipeline.from_pretrained(str(tiny_model), transformer=str(bfl_file), device="cpu", dtype="fp32")
    _assert_same_weights(pipe, original)
    assert pipe.transformer is not tiny_pipe.transformer
    assert np.array_equal(_image(pipe), _image(tiny_pipe))


def test_dtype_applies_to_the_single_file_transformer(tiny_model: Path, bfl_file: Path) -> None:
    pipe = EligenPipeline.from_pretrained(str(tiny_model), transformer=str(bfl_file), device="cpu", dtype="bf16")
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}
    assert pipe.family.pipe.text_encoder_2.dtype == torch.bfloat16


@pytest.mark.parametrize("layout", ["model.diffusion_model.", "diffusion_model.", "diffusers"])
def test_prefixed_and_diffusers_layout_files(tiny_model: Path, original: dict, tmp_path: Path, layout: str) -> None:
    if layout == "diffusers":
        tensors = dict(original)
    else:  # a full checkpoint: the transformer under a prefix, other components beside it (ignored)
        tensors = {**to_bfl(original, prefix=layout), "first_stage_model.decoder.conv_in.weight": torch.ones(3)}
    path = tmp_path / "one.safetensors"
    save_file(tensors, path)
    pipe = EligenPipeline.from_pretrained(str(tiny_model), transformer=str(path), device="cpu", dtype="fp32")
    _assert_same_weights(pipe, original)


def test_conversion_equals_diffusers_at_flux_dev_width() -> None:
    """diffusers' converter hard-codes FLUX.1-dev's width, so it is compared at that width (1 + 1 blocks, small text
    widths, which diffusers does not hard-code), tensor for tensor, with distinct random values everywhere."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    config = {**FLUX_DEV, "num_layers": 1, "num_single_layers": 1, "joint_attention_dim": 32,
              "pooled_projection_dim": 32}
    generator = torch.Generator().manual_seed(0)
    bfl = {k: torch.empty(s, dtype=torch.int16).random_(generator=generator) for k, s in bfl_shapes(config).items()}
    ours = bfl_to_diffusers(bfl, config)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert ours.keys() == theirs.keys() == diffusers_shapes(config).keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("guidance", [True, False])
def test_conversion_keys_and_shapes_equal_diffusers_at_full_size(guidance: bool) -> None:
    """FLUX.1-dev (and schnell, without guidance) at full size on the meta device: names and shapes only."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    config = {**FLUX_DEV, "guidance_embeds": guidance}
    bfl = {k: torch.empty(s, device="meta") for k, s in bfl_shapes(config).items()}
    assert ("guidance_in.in_layer.weight" in bfl) == guidance and len(bfl) == (780 if guidance else 776)
    assert bfl["single_blocks.0.linear1.weight"].shape == (3 * 3072 + 12288, 3072)
    ours = {k: tuple(v.shape) for k, v in bfl_to_diffusers(bfl, config).items()}
    theirs = {k: tuple(v.shape) for k, v in convert_flux_transformer_checkpoint_to_diffusers(dict(bfl)).items()}
    assert ours == theirs == diffusers_shapes(config)


def test_int8_quantised_single_file_equals_quantised_folder(tiny_model: Path, bfl_file: Path) -> None:
    from torchao.utils import TorchAOBaseTensor

    folder = EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32", quantize="int8")
    single = EligenPipeline.from_pretrained(str(tiny_model), transformer=str(bfl_file), device="cpu", dtype="fp32",
                                            quantize="int8")
    weight = single.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, TorchAOBaseTensor)
    assert np.array_equal(_image(single), _image(folder))


def test_nf4_with_a_single_file_is_refused(tiny_model: Path, bfl_file: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nf4 cannot be combined with a single-file transformer"):
        EligenPipeline.from_pretrained(str(tiny_model), transformer=str(bfl_file), device="cpu", quantize="nf4")


def test_hub_file_is_fetched(tiny_model: Path, bfl_file: Path, original: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched = []

    def fake_fetch(repo_id: str, filename: str) -> Path:
        fetched.append((repo_id, filename))
        return bfl_file

    monkeypatch.setattr("eligen.pipeline.hub.fetch", fake_fetch)
    pipe = EligenPipeline.from_pretrained(str(tiny_model), transformer="some-org/fine-tunes/v2/flux.safetensors",
                                          device="cpu", dtype="fp32")
    assert fetched == [("some-org/fine-tunes", "v2/flux.safetensors")]
    _assert_same_weights(pipe, original)


# --- errors ---------------------------------------------------------------------------------------------------------


def _broken(original: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    bfl = to_bfl(original)
    if case == "wrong shape":
        bfl["double_blocks.0.img_attn.qkv.weight"] = torch.zeros(90, 32)
    elif case == "missing block":
        bfl = {k: v for k, v in bfl.items() if not k.startswith("single_blocks.1.")}
    elif case == "extra block":
        bfl.update({k.replace("double_blocks.1.", "double_blocks.2."): v.clone()
                    for k, v in bfl.items() if k.startswith("double_blocks.1.")})
    elif case == "no guidance":
        bfl = {k: v for k, v in bfl.items() if not k.startswith("guidance_in.")}
    elif case == "fp8 scales":
        bfl["double_blocks.0.img_attn.qkv.scale_weight"] = torch.ones(1)
    return bfl


@pytest.mark.parametrize(("case", "words"), [
    ("wrong shape", ["2 double-stream and 2 single-stream blocks of width 32", "wrong shape",
                     "double_blocks.0.img_attn.qkv.weight is [90, 32], the config needs [96, 32]"]),
    ("missing block", ["2 double-stream and 1 single-stream blocks", "missing: single_blocks.1.",
                       "(and 3 more)"]),
    ("extra block", ["3 double-stream and 2 single-stream blocks", "not in the model: double_blocks.2."]),
    ("no guidance", ["missing: guidance_in.in_layer.bias", "has no guidance embedding", "guidance_embeds: true"]),
    ("fp8 scales", ["not in the model: double_blocks.0.img_attn.qkv.scale_weight"]),
])
def test_files_that_do_not_fit_the_config_are_refused(tiny_model: Path, original: dict, tmp_path: Path, case: str,
                                                      words: list[str]) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(_broken(original, case), path)
    with pytest.raises(ModelLoadError) as caught:
        EligenPipeline.from_pretrained(str(tiny_model), transformer=str(path), device="cpu", dtype="fp32")
    message = str(caught.value)
    assert f"{path} does not fit the transformer of {tiny_model}" in message
    for word in words:
        assert word in message, (case, word, message)


def test_not_a_flux_checkpoint_or_not_safetensors(tiny_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "unet.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ModelLoadError, match=r"unet\.safetensors is not a FLUX transformer checkpoint.*down_blocks"):
        EligenPipeline.from_pretrained(str(tiny_model), transformer=str(other), device="cpu")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"PK\x03\x04 not a safetensors header")
    with pytest.raises(ModelLoadError, match=r"could not read the transformer checkpoint .*model\.ckpt as a "
                                             r"\.safetensors file"):
        EligenPipeline.from_pretrained(str(tiny_model), transformer=str(pickle), device="cpu")
    with pytest.raises(ModelLoadError, match=r"the transformer checkpoint .*missing\.safetensors does not exist"):
        EligenPipeline.from_pretrained(str(tiny_model), transformer=str(tmp_path / "missing.safetensors"))


# --- layouts and the command line -----------------------------------------------------------------------------------


def test_transformer_resolves_against_the_layout_file_or_stays_a_hub_file(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "project" / "ft").mkdir(parents=True)
    (tmp_path / "project" / "ft" / "a.safetensors").write_bytes(b"")
    (tmp_path / "project" / "layout.yaml").write_text("prompt: a\nmodel: org/model\ntransformer: ft/a.safetensors\n")
    monkeypatch.chdir(tmp_path)
    src = load_source(Path("project/layout.yaml"), {})
    assert src.layout.transformer == str((tmp_path / "project" / "ft" / "a.safetensors").resolve())
    assert load_source(Path("project/layout.yaml"), {"transformer": "project/ft/a.safetensors"}).layout.transformer \
        == str((tmp_path / "project" / "ft" / "a.safetensors").resolve())  # --transformer: the current folder
    assert load_source(Path("project/layout.yaml"), {}).layout.model == "org/model"
    assert resolve_transformer("org/repo/sub/flux.safetensors", tmp_path) == "org/repo/sub/flux.safetensors"
    for missing in ("./nope.safetensors", "nope.safetensors", "/no/such/file.safetensors", "a/b.safetensors",
                    "org/repo/file.ckpt"):
        with pytest.raises(LayoutError, match=r"transformer: expected a local \.safetensors file or hub-repo-id"):
            resolve_transformer(missing, tmp_path)
    with pytest.raises(LayoutError, match="transformer"):
        parse_layout({"prompt": "a", "transformer": ""})


def _scene(folder: Path, model: Path, **extra: object) -> Path:
    path = folder / f"{extra.pop('name', 'scene')}.yaml"
    path.write_text(json.dumps({"model": str(model), **LAYOUT, **extra}))
    return path


def test_cli_transformer_key_gives_the_folders_image_and_shares_loads(
        tiny_model: Path, bfl_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    original = EligenPipeline.from_pretrained.__func__

    def counting(cls, model, **kwargs):
        loads.append((model, kwargs["transformer"]))
        return original(cls, model, **kwargs)

    monkeypatch.setattr(EligenPipeline, "from_pretrained", classmethod(counting))
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "mine.safetensors").write_bytes(bfl_file.read_bytes())
    local = str((tmp_path / "ft" / "mine.safetensors").resolve())
    plain = _scene(tmp_path, tiny_model, name="plain")
    first = _scene(tmp_path, tiny_model, name="first", transformer="ft/mine.safetensors")
    second = _scene(tmp_path, tiny_model, name="second", transformer=local, seed=1)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["generate", str(plain), str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert loads == [(str(tiny_model), None), (str(tiny_model), local)]
    images = {name: np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("plain", "first", "second")}
    assert np.array_equal(images["plain"], images["first"])
    assert read_png_metadata(tmp_path / "first.png")["layout"]["transformer"] == local
    assert "transformer" not in read_png_metadata(tmp_path / "plain.png")["layout"]

    result = runner.invoke(app, ["generate", str(tmp_path / "first.png"), "-o", "rerun.png"])  # from the PNG
    assert result.exit_code == 0, result.output
    assert loads[-1] == (str(tiny_model), local)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rerun.png")), images["plain"])

    result = runner.invoke(app, ["generate", str(plain), "--transformer", "ft/mine.safetensors", "-o", "opt.png"])
    assert result.exit_code == 0, result.output
    assert loads[-1] == (str(tiny_model), local)
    assert read_png_metadata(tmp_path / "opt.png")["layout"]["transformer"] == local


def test_cli_inpaint_takes_transformer(tiny_model: Path, bfl_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.full((64, 96, 3), 120, dtype=np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "edits.yaml").write_text("prompt: a street\nseed: 2\nentities:\n  - prompt: a bus\n"
                                         "    box: [10, 10, 60, 50]\n")
    monkeypatch.chdir(tmp_path)
    outputs = []
    for extra in ([], ["--transformer", str(bfl_file)]):
        out = f"out{len(outputs)}.png"
        result = runner.invoke(app, ["inpaint", "photo.png", "edits.yaml", "-o", out, "--model", str(tiny_model),
                                     "--steps", "2", *extra])
        assert result.exit_code == 0, result.output
        outputs.append(np.asarray(Image.open(tmp_path / out)).astype(int))
    # The same weights, but the single file's converted tensors sit in memory differently (fused rows split), so a
    # matmul kernel may sum in another order (seen on one thread): the images agree within one 8-bit level.
    assert np.abs(outputs[0] - outputs[1]).max() <= 1
    assert np.abs(outputs[0] - 120).max() > 5  # the entity was repainted: the comparison is not of two blank images
    assert read_png_metadata(tmp_path / "out1.png")["edits"]["transformer"] == str(bfl_file)


@pytest.mark.parametrize(("where", "code", "words"), [
    ("file", 2, ["scene.yaml: transformer: expected a local .safetensors file", "nope.safetensors does not exist"]),
    ("option", 2, ["--transformer: expected a local .safetensors file", "nope.safetensors does not exist"]),
    ("not flux", 1, ["error: ", "other.safetensors is not a FLUX transformer checkpoint"]),
])
def test_cli_errors_name_the_file(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                  code: int, words: list[str]) -> None:
    save_file({"something.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    monkeypatch.chdir(tmp_path)
    if where == "file":
        args = [str(_scene(tmp_path, tiny_model, transformer="nope.safetensors"))]
    else:
        args = [str(_scene(tmp_path, tiny_model)), "--transformer",
                "nope.safetensors" if where == "option" else "other.safetensors"]
    result = runner.invoke(app, ["generate", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, (where, word, result.output)
    assert not (tmp_path / "scene.png").exists()

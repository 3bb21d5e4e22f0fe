"""IP-Adapters on the tiny FLUX model: both file formats, scale 0, per-entity references (locality in a real dual and a
real single block), every attention form and batched CFG, LoRAs, and the errors a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from eligen.pipeline.adapter_input import IPAdapterError
from eligen.pipeline.families.flux.ip_adapter import adapter_shape, canonical_keys, check_fits, read_adapter_file
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import Layout, LayoutError, parse_layout
from eligen.pipeline.shapes.tiny_ip_adapter import build_tiny_ip_adapters

SIZE = [64, 64]  # 4 x 4 image tokens
BOXES = [[0, 0, 32, 64], [32, 32, 64, 64]]  # token columns 0-1 / the bottom-right 2 x 2 tokens
FILES = {"instantx": "instantx/ip-adapter.bin", "xlabs": "xlabs/ip_adapter.safetensors"}


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ip_adapters(tmp_path_factory.mktemp("adapters") / "ip", tiny_model, seed=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three different reference images: a.png, b.png, c.png."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("refs")
    generator = torch.Generator().manual_seed(2)
    for name in "abc":
        pixels = (torch.rand(48, 40, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def adapter_spec(adapters: Path, fmt: str, **extra: object) -> dict:
    return {"path": str(adapters / FILES[fmt]), "image_encoder": str(adapters / fmt / "image_encoder"), **extra}


def make_layout(adapters: Path | None, fmt: str = "instantx", spec: dict | None = None,
                references: list[dict | None] | None = None, **extra: object) -> Layout:
    entities = [{"prompt": p, "box": b} for p, b in zip(["a red cup", "a blue hat"], BOXES, strict=True)]
    for entity, reference in zip(entities, references or [], strict=False):
        if reference is not None:
            entity["reference"] = reference
    data = {"size": SIZE, "prompt": "a table", "negative_prompt": "dark", "steps": 2, "cfg": 2.5, "loras": [],
            "entities": entities, **extra}
    if adapters is not None:
        data["ip_adapter"] = adapter_spec(adapters, fmt, **(spec or {}))
    return parse_layout(data)


def run(pipe: EligenPipeline, layout: Layout, folder: Path, **options: object) -> torch.Tensor:
    positive, negative = pipe.prepare(layout, folder)
    return pipe.sample(layout, positive, negative, 3, **options)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("fmt", list(FILES))
def test_format_told_from_the_file(fmt, adapters, tiny_pipe) -> None:
    path = adapters / FILES[fmt]
    found, tensors = canonical_keys(read_adapter_file(path), path)
    assert found == fmt
    shape = adapter_shape(found, tensors, path)
    config = dict(tiny_pipe.transformer.config)
    assert shape.layers == config["num_layers"] + (config["num_single_layers"] if fmt == "instantx" else 0)
    assert shape.tokens == (128 if fmt == "instantx" else 4)
    assert shape.bias == (fmt == "xlabs")


def test_tiny_model_command_writes_both_adapters(tmp_path) -> None:
    from typer.testing import CliRunner

    from eligen.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "m"), "--ip-adapters"])
    assert result.exit_code == 0, result.output
    for fmt, name in FILES.items():
        path = tmp_path / "m" / "ip-adapters" / name
        assert canonical_keys(read_adapter_file(path), path)[0] == fmt
        assert (tmp_path / "m" / "ip-adapters" / fmt / "image_encoder" / "config.json").is_file()
    refused = runner.invoke(app, ["tiny-model", str(tmp_path / "q"), "--family", "qwen-image", "--ip-adapters"])
    assert refused.exit_code == 2 and not (tmp_path / "q").exists()


def test_real_instantx_names_and_shapes_fit_flux_dev() -> None:
    """The key names and shapes of InstantX/FLUX.1-dev-IP-Adapter's ip-adapter.bin, written out here from its model
    code (an MLP 1152 -> 2304 -> 128 x 4096, a LayerNorm, `to_k_ip`/`to_v_ip` 4096 -> 3072 without bias for 57
    blocks), fit FLUX.1-dev's transformer config (on the meta device: no memory)."""
    with torch.device("meta"):
        tensors = {"image_proj.proj.0.weight": torch.empty(2304, 1152), "image_proj.proj.0.bias": torch.empty(2304),
                   "image_proj.proj.2.weight": torch.empty(128 * 4096, 2304),
                   "image_proj.proj.2.bias": torch.empty(128 * 4096),
                   "image_proj.norm.weight": torch.empty(4096), "image_proj.norm.bias": torch.empty(4096)}
        tensors |= {f"ip_adapter.{i}.to_{kv}_ip.weight": torch.empty(3072, 4096) for i in range(57) for kv in "kv"}
    flux_dev = {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24, "attention_head_dim": 128,
                "joint_attention_dim": 4096}
    path = Path("ip-adapter.bin")
    fmt, canonical = canonical_keys(tensors, path)
    shape = adapter_shape(fmt, canonical, path)
    assert (fmt, shape.embed_dim, shape.width, shape.tokens, shape.layers) == ("instantx", 1152, 4096, 128, 57)
    check_fits(shape, fmt, flux_dev, path, canonical)
    with pytest.raises(IPAdapterError, match="57 adapter layers, the model 50"):
        check_fits(shape, fmt, {**flux_dev, "num_single_layers": 31}, path, canonical)


def test_file_of_neither_format_is_refused(tmp_path, tiny_pipe, images) -> None:
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 4)},
                                str(path))
    layout = parse_layout({"size": SIZE, "prompt": "a table", "steps": 2, "loras": [],
                           "ip_adapter": {"path": str(path), "image": str(images / "a.png")}})
    with pytest.raises(LayoutError, match=r"ip_adapter\.path: .*not a FLUX IP-Adapter of a known format"):
        tiny_pipe.prepare(layout, tmp_path)


def test_bad_references_name_the_field(tmp_path, adapters, tiny_pipe) -> None:
    with pytest.raises(LayoutError, match=r"entities\[1\].reference: expected a top-level `ip_adapter`"):
        make_layout(None, references=[None, {"image": "a.png"}])
    layout = make_layout(adapters, spec={"image": "missing.png"})
    with pytest.raises(LayoutError, match=r"ip_adapter\.image: expected an existing image file"):
        tiny_pipe.prepare(layout, tmp_path)
    layout = make_layout(adapters, references=[{"image": "nope.png"}])
    with pytest.raises(LayoutError, match=r"entities\[0\].reference.image: expected an existing image file"):
        tiny_pipe.prepare(layout, tmp_path)
    with pytest.raises(LayoutError, match="ip_adapter: expected a reference image"):
        tiny_pipe.prepare(make_layout(adapters), tmp_path)


def test_qwen_image_is_refused(tiny_qwen_pipe, adapters, images) -> None:
    layout = parse_layout({"size": SIZE, "prompt": "a table", "steps": 2, "loras": [],
                           "ip_adapter": adapter_spec(adapters, "instantx", image=str(images / "a.png"))})
    with pytest.raises(LayoutError, match="ip_adapter: expected no ip_adapter for a qwen-image model"):
        tiny_qwen_pipe.prepare(layout, images)


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("fmt", list(FILES))
def test_scale_zero_is_the_plain_result_bit_for_bit(fmt, adapters, images, tiny_pipe) -> None:
    plain = run(tiny_pipe, make_layout(None), images)
    zero = make_layout(adapters, fmt, spec={"image": "a.png", "scale": 0.0},
                       references=[{"image": "b.png", "scale": 0.0}])
    assert torch.equal(run(tiny_pipe, zero, images), plain)
    acting = make_layout(adapters, fmt, spec={"image": "a.png", "scale": 0.5})
    assert (run(tiny_pipe, acting, images) - plain).abs().max().item() > 1e-4


@pytest.mark.parametrize("fmt", list(FILES))
def test_every_form_and_batched_cfg_agree(fmt, adapters, images, tiny_pipe) -> None:
    """Global and per-entity references under dense, split and flex, and with both CFG branches batched (the
    negative branch has fewer references: padded with zero ones). The forms sum in other orders: float32 rounding,
    1e-5 of the result's magnitude."""
    layout = make_layout(adapters, fmt, spec={"image": "a.png", "scale": 0.6},
                         references=[{"image": "b.png", "scale": 0.9}, {"image": "c.png", "scale": 0.4}])
    dense = run(tiny_pipe, layout, images, attention="dense")
    tolerance = 1e-5 * dense.abs().max().item()
    for options in ({"attention": "split"}, {"attention": "flex"}, {"attention": "dense", "batch_cfg": True},
                    {"attention": "split", "batch_cfg": True}):
        assert (run(tiny_pipe, layout, images, **options) - dense).abs().max().item() <= tolerance, options


def test_loras_keep_working_with_an_adapter(adapters, images, tiny_model, tmp_path) -> None:
    """A LoRA (hooked and fused) and the adapter both act: each changes the result of the other."""
    dim = 32
    generator = torch.Generator().manual_seed(4)
    lora = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, dim, generator=generator),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(3 * dim, 4, generator=generator),
    }, str(lora))
    with_lora = {"loras": [{"path": str(lora)}]}
    for fuse in (False, True):
        pipe = EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32", fuse_loras=fuse)
        both = run(pipe, make_layout(adapters, spec={"image": "a.png"}, **with_lora), images)
        lora_only = run(pipe, make_layout(None, **with_lora), images)  # the same LoRA set: fused ones stay
        plain = EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32")
        adapter_only = run(plain, make_layout(adapters, spec={"image": "a.png"}), images)
        assert (both - lora_only).abs().max().item() > 1e-4
        assert (both - adapter_only).abs().max().item() > 1e-4


# ---------------------------------------------------------------- per-entity locality


def block_outputs(pipe: EligenPipeline, layout: Layout, folder: Path) -> tuple[torch.Tensor, ...]:
    """The attention outputs of the real first dual block (image, text) and the real first single block (joint),
    for fixed random inputs under the layout's positive conditioning (dense mask)."""
    positive, _ = pipe.prepare(layout, folder)
    transformer = pipe.transformer
    n_text, n_image = positive.prompt_embeds.shape[1], 16
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    generator = torch.Generator().manual_seed(8)
    image = torch.randn(1, n_image, width, generator=generator)
    text = torch.randn(1, n_text, width, generator=generator)
    from eligen.pipeline.families.flux.transformer import image_ids

    ids = torch.cat([positive.text_ids, image_ids(8, 8, torch.device("cpu"), torch.float32)])
    rotary = transformer.pos_embed(ids)
    kwargs = {"attention_mask": positive.attention_mask, "ip_adapter": positive.ip_adapter,
              "image_rotary_emb": rotary}
    with torch.no_grad():
        dual_image, dual_text = transformer.transformer_blocks[0].attn(hidden_states=image, encoder_hidden_states=text,
                                                                       **kwargs)
        single = transformer.single_transformer_blocks[0].attn(hidden_states=torch.cat([text, image], 1), **kwargs)
    return dual_image[0], dual_text[0], single[0, n_text:], single[0, :n_text]


def changed_tokens(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return set(torch.nonzero((a - b).abs().amax(dim=-1) > 0)[:, 0].tolist())


REGION_0 = {r * 4 + c for r in range(4) for c in range(2)}
REGION_1 = {r * 4 + c for r in (2, 3) for c in (2, 3)}


def test_an_entity_reference_acts_on_its_region_only(adapters, images, tiny_pipe) -> None:
    """Changing entity 0's reference image changes the dual and single blocks' outputs exactly at the image tokens of
    region 0 (every one of them) and nowhere else, text included; the same for entity 1 and region 1. Changing the
    global reference changes every image token outside both regions and, in the single block, the text tokens."""
    refs = [{"image": "a.png", "scale": 0.8}, {"image": "b.png", "scale": 0.8}]
    base = block_outputs(tiny_pipe, make_layout(adapters, spec={"image": "c.png"}, references=refs), images)
    for entity, region in ((0, REGION_0), (1, REGION_1)):
        changed = [dict(r) for r in refs]
        changed[entity]["image"] = "c.png"
        other = block_outputs(tiny_pipe, make_layout(adapters, spec={"image": "c.png"}, references=changed), images)
        dual_image, dual_text, single_image, single_text = (changed_tokens(a, b) for a, b in zip(base, other,
                                                                                                  strict=True))
        assert dual_image == region and single_image == region
        assert dual_text == set() and single_text == set()
    other = block_outputs(tiny_pipe, make_layout(adapters, spec={"image": "a.png"}, references=refs), images)
    outside = set(range(16)) - REGION_0 - REGION_1
    assert changed_tokens(base[0], other[0]) == outside and changed_tokens(base[2], other[2]) == outside
    assert changed_tokens(base[3], other[3]) == set(range(base[3].shape[0]))  # single block: the text too
    assert changed_tokens(base[1], other[1]) == set()  # dual block: the adapter acts on the image stream only


def test_attention_maps_pass_keeps_the_adapter(adapters, images, tiny_pipe, monkeypatch) -> None:
    """The extra sampling pass of `--attention-maps` runs the recorded block with the adapter too: its adapter layer
    is called in every step of both branches."""
    from eligen.pipeline.adapter_input import AdapterInput
    from eligen.pipeline.attention_maps import Block, attention_maps

    layout = make_layout(adapters, spec={"image": "a.png"})
    positive, negative = tiny_pipe.prepare(layout, images)
    layers: list[int] = []
    original = AdapterInput.contribution

    def counting(self, query, layer, text_length):
        layers.append(layer)
        return original(self, query, layer, text_length)

    monkeypatch.setattr(AdapterInput, "contribution", counting)
    attention_maps(tiny_pipe, layout, positive, negative, 3, [1, 2], Block.parse("dual:-1"))
    assert layers.count(1) == 2 * layout.steps  # the last dual block's layer: 2 branches x 2 steps


@pytest.mark.parametrize("fmt", list(FILES))
def test_an_entity_reference_stays_local_under_cfg(fmt, adapters, images, tiny_pipe) -> None:
    """At cfg 3 the negative branch's zero-image reference covers the referenced region only, so the image changes
    mostly inside it: the mean pixel change against no adapter, inside entity 0's half over outside it. Measured
    (docs/styled-entities.md): InstantX 3.78, XLabs 1.78; with the negative's reference on every token, 0.96 and
    1.30."""
    import numpy as np

    def layout(reference: bool) -> Layout:
        entities = [{"prompt": "a red cup", "box": [0, 0, 64, 128]}, {"prompt": "a blue hat", "box": [64, 0, 128, 128]}]
        data = {"size": [128, 128], "prompt": "a table", "negative_prompt": "dark", "steps": 4, "cfg": 3.0,
                "loras": [], "entities": entities}
        if reference:
            entities[0]["reference"] = {"image": "a.png", "scale": 1.0}
            data["ip_adapter"] = adapter_spec(adapters, fmt)
        return parse_layout(data)

    without, with_ = (np.asarray(tiny_pipe.generate(layout(r), [0], images)[0]).astype(float) for r in (False, True))
    change = np.abs(with_ - without).mean(axis=2)
    assert change[:, :64].mean() / change[:, 64:].mean() > 1.5

"""LoRA loading for FLUX transformers: key styles, exact fused splits, attach / fuse, diffusers parity."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel

from eligen.pipeline.families.flux.lora import detect_style, load_lora, load_lora_state_dict, lora_deltas
from eligen.pipeline.lora import LoraDelta, LoraError, apply_loras, remove_loras

TINY = {
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": (4, 6, 6),
    "guidance_embeds": True,  # so that guidance_in / guidance_embedder layers exist too
}

# transformer/config.json of black-forest-labs/FLUX.1-dev
FLUX_DEV = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}

# The correspondence, written out independently of the module:
# (BFL name, reference name, diffusers modules in the source's row order).
DOUBLE = [
    ("img_attn.qkv", "attn.a_to_qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("txt_attn.qkv", "attn.b_to_qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("img_attn.proj", "attn.a_to_out", ["attn.to_out.0"]),
    ("txt_attn.proj", "attn.b_to_out", ["attn.to_add_out"]),
    ("img_mlp.0", "ff_a.0", ["ff.net.0.proj"]),
    ("img_mlp.2", "ff_a.2", ["ff.net.2"]),
    ("txt_mlp.0", "ff_b.0", ["ff_context.net.0.proj"]),
    ("txt_mlp.2", "ff_b.2", ["ff_context.net.2"]),
    ("img_mod.lin", "norm1_a.linear", ["norm1.linear"]),
    ("txt_mod.lin", "norm1_b.linear", ["norm1_context.linear"]),
]
SINGLE = [
    ("linear1", "to_qkv_mlp", ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]),
    ("linear2", "proj_out", ["proj_out"]),
    ("modulation.lin", "norm.linear", ["norm.linear"]),
]
GLOBAL = [
    ("img_in", "x_embedder", "x_embedder"),
    ("txt_in", "context_embedder", "context_embedder"),
    ("time_in.in_layer", "time_embedder.timestep_embedder.0", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_embedder.timestep_embedder.2", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "pooled_text_embedder.0", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "pooled_text_embedder.2", "time_text_embed.text_embedder.linear_2"),
    (
        "guidance_in.in_layer",
        "guidance_embedder.timestep_embedder.0",
        "time_text_embed.guidance_embedder.linear_1",
    ),
    (
        "guidance_in.out_layer",
        "guidance_embedder.timestep_embedder.2",
        "time_text_embed.guidance_embedder.linear_2",
    ),
    ("final_layer.linear", "final_proj_out", "proj_out"),
    ("final_layer.adaLN_modulation.1", "final_norm_out.linear", "norm_out.linear"),
]
SWAPPED = {"norm_out.linear"}  # BFL / reference rows (shift, scale); diffusers rows (scale, shift)


@dataclass
class Group:
    """One source layer of a LoRA file and the diffusers Linears it feeds."""

    bfl: str
    native: str
    modules: list[str]

    @property
    def kohya(self) -> str:
        return "lora_unet_" + self.bfl.replace(".", "_")


@dataclass
class Truth:
    """A LoRA given per group: one A, one alpha, one B per diffusers module (rows in diffusers order)."""

    down: torch.Tensor
    ups: list[torch.Tensor]
    alpha: float | None


def groups(config: dict) -> list[Group]:
    out = []
    for i in range(config["num_layers"]):
        for bfl, native, parts in DOUBLE:
            out.append(
                Group(
                    f"double_blocks.{i}.{bfl}",
                    f"blocks.{i}.{native}",
                    [f"transformer_blocks.{i}.{p}" for p in parts],
                )
            )
    for j in range(config["num_single_layers"]):
        for bfl, native, parts in SINGLE:
            out.append(
                Group(
                    f"single_blocks.{j}.{bfl}",
                    f"single_blocks.{j}.{native}",
                    [f"single_transformer_blocks.{j}.{p}" for p in parts],
                )
            )
    out += [Group(bfl, native, [module]) for bfl, native, module in GLOBAL]
    return out


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def make_truth(
    shapes: dict[str, tuple[int, int]], config: dict, rank: int, seed: int, alphas=(2.0, 4.0, 8.0, None)
) -> dict[str, Truth]:
    gen = torch.Generator().manual_seed(seed)
    truth = {}
    for n, group in enumerate(groups(config)):
        in_features = shapes[group.modules[0]][1]
        down = torch.randn(rank, in_features, generator=gen) * 0.3
        ups = [torch.randn(shapes[m][0], rank, generator=gen) * 0.3 for m in group.modules]
        truth[group.bfl] = Truth(down, ups, alphas[n % len(alphas)])
    return truth


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def encode(truth: dict[str, Truth], config: dict, style: str) -> dict[str, torch.Tensor]:
    """Write the truth LoRA in one of the file styles."""
    sd: dict[str, torch.Tensor] = {}
    for group in groups(config):
        t = truth[group.bfl]
        up = torch.cat(t.ups, dim=0)
        if group.modules[0] in SWAPPED:
            up = _swap_halves(up)
        alpha = None if t.alpha is None else torch.tensor(t.alpha)
        if style in ("kohya", "comfy"):
            base = group.kohya if style == "kohya" else "diffusion_model." + group.bfl
            sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = t.down, up
            if alpha is not None:
                sd[f"{base}.alpha"] = alpha
        elif style in ("native", "native_nodefault"):
            infix = ".default" if style == "native" else ""
            sd[f"{group.native}.lora_A{infix}.weight"], sd[f"{group.native}.lora_B{infix}.weight"] = (
                t.down,
                up,
            )
            if alpha is not None:
                sd[f"{group.native}.alpha"] = alpha
        else:  # peft, peft_noprefix, kohya_diffusers: one entry per diffusers module
            for module, part in zip(group.modules, t.ups, strict=True):
                if style == "kohya_diffusers":
                    base, a, b = "lora_transformer_" + module.replace(".", "_"), "lora_down", "lora_up"
                else:
                    base = ("transformer." if style == "peft" else "") + module
                    a, b = "lora_A", "lora_B"
                sd[f"{base}.{a}.weight"], sd[f"{base}.{b}.weight"] = t.down.clone(), part
                if alpha is not None:
                    sd[f"{base}.alpha"] = alpha
    return sd


def expected_deltas(truth: dict[str, Truth], config: dict, user_scale: float = 1.0) -> dict[str, torch.Tensor]:
    out = {}
    for group in groups(config):
        t = truth[group.bfl]
        scale = 1.0 if t.alpha is None else t.alpha / t.down.shape[0]
        for module, up in zip(group.modules, t.ups, strict=True):
            out[module] = user_scale * scale * (up @ t.down)
    return out


def tiny_model(seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY).eval()


def model_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w, txt = 4, 4, 5
    img_ids = torch.stack(
        torch.meshgrid(torch.zeros(1), torch.arange(h).float(), torch.arange(w).float(), indexing="ij"),
        dim=-1,
    ).reshape(-1, 3)
    return {
        "hidden_states": torch.randn(1, h * w, TINY["in_channels"], generator=gen),
        "encoder_hidden_states": torch.randn(1, txt, TINY["joint_attention_dim"], generator=gen),
        "pooled_projections": torch.randn(1, TINY["pooled_projection_dim"], generator=gen),
        "timestep": torch.tensor([0.7]),
        "guidance": torch.tensor([3.5]),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(txt, 3),
    }


def forward(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(), return_dict=False)[0]


def patched_copy(model: torch.nn.Module, *deltas: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of the model whose Linear weights were patched by hand."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for d in deltas:
            for name, delta in d.items():
                other.get_submodule(name).weight += delta
    return other


def assert_behaves_as(model: torch.nn.Module, base: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Every Linear of ``model`` computes x @ (W + expected delta).T + b, W and b from ``base``."""
    gen = torch.Generator().manual_seed(5)
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        ref = base.get_submodule(name)
        weight = ref.weight + expected.get(name, 0.0)
        x = torch.randn(3, module.in_features, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(module(x), F.linear(x, weight, ref.bias), rtol=1e-5, atol=2e-6)


ALL_STYLES = ["kohya", "comfy", "kohya_diffusers", "native", "native_nodefault", "peft", "peft_noprefix"]
DETECTED = {
    "comfy": "kohya",
    "kohya_diffusers": "kohya",
    "native_nodefault": "native",
    "peft_noprefix": "peft",
}


@pytest.fixture(scope="module")
def base_model() -> FluxTransformer2DModel:
    return tiny_model()


@pytest.fixture(scope="module")
def truth(base_model) -> dict[str, Truth]:
    return make_truth(linear_shapes(base_model), TINY, rank=4, seed=10)


def test_groups_cover_every_linear(base_model):
    covered = [m for g in groups(TINY) for m in g.modules]
    assert sorted(covered) == sorted(linear_shapes(base_model))


@pytest.mark.parametrize("style", ALL_STYLES)
def test_detect_style(truth, style):
    assert detect_style(encode(truth, TINY, style)) == DETECTED.get(style, style)


@pytest.mark.parametrize("style", ALL_STYLES)
def test_deltas_are_exact_splits(truth, style):
    deltas = lora_deltas(encode(truth, TINY, style), TINY)
    expected = expected_deltas(truth, TINY)
    got = {d.module: d.scale * (d.up @ d.down) for d in deltas}
    assert sorted(got) == sorted(expected)
    for name, delta in expected.items():
        torch.testing.assert_close(got[name], delta, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("style", ["kohya", "native", "peft"])
def test_apply_matches_hand_patched_weights(base_model, truth, style, fuse):
    model = copy.deepcopy(base_model)
    deltas = lora_deltas(encode(truth, TINY, style), TINY)
    apply_loras(model, [(deltas, 0.8)], fuse=fuse)
    expected = expected_deltas(truth, TINY, user_scale=0.8)
    assert_behaves_as(model, base_model, expected)
    if fuse:
        for name, delta in expected.items():
            torch.testing.assert_close(
                model.get_submodule(name).weight,
                base_model.get_submodule(name).weight + delta,
                rtol=1e-6,
                atol=1e-7,
            )
    else:  # weights untouched, nothing added to the state dict
        assert model.state_dict().keys() == base_model.state_dict().keys()
        for key, value in base_model.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)
    reference = forward(patched_copy(base_model, expected))
    assert not torch.allclose(reference, forward(base_model), atol=1e-3)  # the LoRA does change the output
    torch.testing.assert_close(forward(model), reference, rtol=1e-5, atol=1e-5)


def test_same_delta_in_every_style_gives_identical_results(base_model, truth):
    converted = {style: lora_deltas(encode(truth, TINY, style), TINY) for style in ALL_STYLES}
    reference = {d.module: d for d in converted["kohya"]}
    outputs = []
    for style, deltas in converted.items():
        assert sorted(d.module for d in deltas) == sorted(reference), style
        for d in deltas:
            ref = reference[d.module]
            assert torch.equal(d.down, ref.down) and torch.equal(d.up, ref.up) and d.scale == ref.scale, style
        model = copy.deepcopy(base_model)
        apply_loras(model, [(deltas, 1.0)])
        outputs.append(forward(model))
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])


@pytest.mark.parametrize("fuse", [False, True])
def test_two_loras_stack_with_their_own_scales(base_model, truth, fuse):
    other = make_truth(linear_shapes(base_model), TINY, rank=2, seed=11, alphas=(1.0, 3.0))
    first = lora_deltas(encode(truth, TINY, "kohya"), TINY)
    second = lora_deltas(encode(other, TINY, "peft"), TINY)
    expected = [expected_deltas(truth, TINY, 0.7), expected_deltas(other, TINY, -1.3)]
    summed = {k: expected[0][k] + expected[1][k] for k in expected[0]}
    reference = forward(patched_copy(base_model, *expected))

    model = copy.deepcopy(base_model)
    apply_loras(model, [(first, 0.7), (second, -1.3)], fuse=fuse)
    assert_behaves_as(model, base_model, summed)
    torch.testing.assert_close(forward(model), reference, rtol=1e-5, atol=1e-5)

    # Applied one call after the other: every module gets both.
    model = copy.deepcopy(base_model)
    apply_loras(model, [(first, 0.7)], fuse=fuse)
    apply_loras(model, [(second, -1.3)], fuse=fuse)
    assert_behaves_as(model, base_model, summed)
    torch.testing.assert_close(forward(model), reference, rtol=1e-5, atol=1e-5)


def test_remove_loras_restores_the_model(base_model, truth):
    model = copy.deepcopy(base_model)
    apply_loras(model, [(lora_deltas(encode(truth, TINY, "native"), TINY), 1.0)])
    assert remove_loras(model) == len(linear_shapes(model))
    assert torch.equal(forward(model), forward(base_model))
    assert remove_loras(model) == 0


def test_unfused_lora_follows_dtype_and_device_moves(base_model, truth):
    deltas = lora_deltas(encode(truth, TINY, "kohya"), TINY)
    model = copy.deepcopy(base_model).to(torch.bfloat16)
    apply_loras(model, [(deltas, 1.0)])
    to_q = model.get_submodule("transformer_blocks.0.attn.to_q")
    assert all(b.dtype == torch.float32 for b in to_q.buffers())  # float32 factors are not rounded to bf16
    x = torch.randn(3, to_q.in_features).to(torch.bfloat16)
    out = to_q(x)
    assert out.dtype == torch.bfloat16
    delta = expected_deltas(truth, TINY)["transformer_blocks.0.attn.to_q"]
    expected = F.linear(x.float(), to_q.weight.float() + delta, to_q.bias.float())
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    model.to(torch.float64)  # buffers follow .to()
    assert all(b.dtype == torch.float64 for b in to_q.buffers())
    assert forward(model.to(torch.float32)).dtype == torch.float32

    # bf16 factors on a bf16 model stay bf16 (no memory doubling); the branch is still computed in float32.
    bf16 = [LoraDelta(d.module, d.down.bfloat16(), d.up.bfloat16(), d.scale) for d in deltas]
    model = copy.deepcopy(base_model).to(torch.bfloat16)
    apply_loras(model, [(bf16, 1.0)])
    to_q = model.get_submodule("transformer_blocks.0.attn.to_q")
    assert all(b.dtype == torch.bfloat16 for b in to_q.buffers())
    delta = next(d for d in bf16 if d.module == "transformer_blocks.0.attn.to_q")
    lora = F.linear(F.linear(x.float(), delta.down.float()), delta.up.float()) * delta.scale
    expected = (F.linear(x, to_q.weight, to_q.bias).float() + lora).to(torch.bfloat16)
    assert torch.equal(to_q(x), expected)


def test_unmatched_keys_are_listed(truth):
    sd = encode(truth, TINY, "kohya")
    junk = {
        "lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight": torch.zeros(4, 32),  # block beyond the model
        "lora_unet_double_blocks_7_img_attn_qkv.lora_up.weight": torch.zeros(96, 4),
        "lora_unet_foo_bar.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_double_blocks_0_img_attn_qkv.dora_scale": torch.zeros(1, 32),
        "lora_unet_single_blocks_0_linear2.lora_B.bias": torch.zeros(32),
    }
    missing_up = "lora_unet_double_blocks_1_txt_mlp_0.lora_up.weight"
    bad = {**sd, **junk}
    del bad[missing_up]
    with pytest.raises(LoraError) as info:
        lora_deltas(bad, TINY)
    listed = set(info.value.keys)
    assert set(junk) <= listed
    assert "lora_unet_double_blocks_1_txt_mlp_0.lora_down.weight" in listed  # its pair is missing
    for key in junk:
        assert key in str(info.value)


def test_text_encoder_keys_raise_unless_skipped(truth):
    sd = {
        **encode(truth, TINY, "kohya"),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
    }
    with pytest.raises(LoraError, match="skip_text_encoder"):
        lora_deltas(sd, TINY)
    assert len(lora_deltas(sd, TINY, skip_text_encoder=True)) == len(lora_deltas(encode(truth, TINY, "kohya"), TINY))


def test_mixed_and_unknown_styles_raise(truth):
    mixed = {**encode(truth, TINY, "kohya"), **encode(truth, TINY, "native")}
    with pytest.raises(LoraError, match="mixes key styles"):
        detect_style(mixed)
    with pytest.raises(LoraError, match="mixes key styles"):
        lora_deltas(mixed, TINY)
    with pytest.raises(LoraError, match="unknown LoRA key style") as info:
        lora_deltas({"model.layers.0.q.lora_A.weight": torch.zeros(1, 2)}, TINY)
    assert "model.layers.0.q.lora_A.weight" in str(info.value)


def test_shape_mismatches_are_listed(base_model, truth):
    sd = encode(truth, TINY, "kohya")
    sd["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] = torch.zeros(95, 4)  # not 3 x 32 rows
    sd["lora_unet_single_blocks_1_linear2.lora_down.weight"] = torch.zeros(4, 33)  # proj_out takes 32 + 128
    with pytest.raises(LoraError) as info:
        lora_deltas(sd, TINY)
    text = str(info.value)
    assert "lora_unet_double_blocks_0_img_attn_qkv" in text and "lora_unet_single_blocks_1_linear2" in text

    model = copy.deepcopy(base_model)
    good = lora_deltas(encode(truth, TINY, "peft"), TINY)
    wrong = [
        LoraDelta("transformer_blocks.0.attn.to_q", torch.zeros(2, 31), torch.zeros(32, 2), 1.0),
        LoraDelta("transformer_blocks.9.attn.to_q", torch.zeros(2, 32), torch.zeros(32, 2), 1.0),
        LoraDelta("transformer_blocks.0.attn", torch.zeros(2, 32), torch.zeros(32, 2), 1.0),
    ]
    for fuse in (False, True):
        with pytest.raises(LoraError) as info:
            apply_loras(model, [(good, 1.0), (wrong, 1.0)], fuse=fuse)
        for delta in wrong:
            assert delta.module in str(info.value)
    assert torch.equal(forward(model), forward(base_model))  # nothing was applied
    with pytest.raises(LoraError, match="do not chain"):
        LoraDelta("x_embedder", torch.zeros(2, 64), torch.zeros(32, 3), 1.0)


def test_load_lora_state_dict(tmp_path, truth):
    sd = encode(truth, TINY, "kohya")
    path = tmp_path / "lora.safetensors"
    safetensors.torch.save_file(sd, str(path))
    loaded = load_lora_state_dict(path)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert len(load_lora(path, TINY)) == len(lora_deltas(sd, TINY))

    pickle = tmp_path / "lora.pt"
    torch.save(sd, pickle)
    with pytest.raises(LoraError, match="pickle") as info:
        load_lora_state_dict(pickle)
    assert str(pickle) in str(info.value)
    with pytest.raises(LoraError, match="no such LoRA file"):
        load_lora_state_dict(tmp_path / "missing.safetensors")

    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({**sd, "lora_unet_nope.lora_down.weight": torch.zeros(1, 2)}, str(bad))
    with pytest.raises(LoraError) as info:
        load_lora(bad, TINY)
    assert str(bad) in str(info.value) and "lora_unet_nope.lora_down.weight" in str(info.value)


def test_peft_alphas_from_diffusers_metadata(tmp_path, truth):
    # diffusers' save_lora_weights keeps alphas in the LoraConfig written to the header, not as tensors.
    sd = {k: v for k, v in encode(truth, TINY, "peft").items() if not k.endswith(".alpha")}
    metadata = {
        "transformer.r": 4,
        "transformer.lora_alpha": 8,
        "transformer.alpha_pattern": {"single_transformer_blocks.1.proj_out": 2},
        "transformer.use_rslora": False,
    }
    path = tmp_path / "pytorch_lora_weights.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"lora_adapter_metadata": json.dumps(metadata)})
    scales = {d.module: d.scale for d in load_lora(path, TINY)}
    assert scales["transformer_blocks.0.attn.to_q"] == 2.0
    assert scales["single_transformer_blocks.1.proj_out"] == 0.5
    assert scales["single_transformer_blocks.0.proj_out"] == 2.0


def test_parity_with_diffusers_kohya_conversion_at_flux_dev_size():
    from diffusers.loaders import lora_conversion_utils

    convert = lora_conversion_utils._convert_kohya_flux_lora_to_diffusers
    with torch.device("meta"):
        shapes = linear_shapes(FluxTransformer2DModel(**FLUX_DEV))
    # diffusers drops the alpha of final_layer keys (its converter has a "TODO: alphas"), so keep alpha = rank
    # there; elsewhere alpha takes values that exercise its scale_down / scale_up balancing.
    truth = make_truth(shapes, FLUX_DEV, rank=1, seed=3, alphas=(0.25, 4.0, None, 1.0, 0.5))
    for name in ("final_layer.linear", "final_layer.adaLN_modulation.1"):
        truth[name].alpha = 1.0
    sd = encode(truth, FLUX_DEV, "kohya")

    ours = {d.module: d for d in lora_deltas(sd, FLUX_DEV)}
    theirs_sd = convert(dict(sd))
    theirs = {}
    for key, value in theirs_sd.items():
        module, _, factor = key.removeprefix("transformer.").rpartition(".lora_")
        theirs.setdefault(module, {})[factor] = value
    assert sorted(ours) == sorted(theirs)
    assert len(ours) == 19 * 14 + 38 * 6 + 10  # every Linear of FLUX.1-dev

    # Equal products, probed from both sides without forming the (out x in) matrices: with random probes,
    # D x = 0 and y D = 0 only for D = 0.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(max(s[1] for s in shapes.values()), 3, generator=gen, dtype=torch.float64)
    y = torch.randn(3, max(s[0] for s in shapes.values()), generator=gen, dtype=torch.float64)
    errors = {}
    for module, d in ours.items():
        a, b = theirs[module]["A.weight"].double(), theirs[module]["B.weight"].double()
        down, up = d.down.double(), d.up.double() * d.scale
        xs, ys = x[: down.shape[1]], y[:, : up.shape[0]]
        right, left = up @ (down @ xs), (ys @ up) @ down
        errors[module] = max(
            ((right - b @ (a @ xs)).abs().max() / right.abs().max()).item(),
            ((left - (ys @ b) @ a).abs().max() / left.abs().max()).item(),
        )
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, (worst, errors[worst])


@pytest.mark.parametrize("header", ["{not json", "[" * 100_000, "[1, 2]"])
def test_an_unreadable_adapter_metadata_header_is_a_lora_error(header: str) -> None:
    """A peft-style file's `lora_adapter_metadata` header is data from the file: broken, hostile (nested past the
    recursion limit) or of the wrong type, it is a LoraError naming the file, not a traceback."""
    from eligen.pipeline.lora import LoraError
    from eligen.pipeline.lora_files import peft_alphas

    with pytest.raises(LoraError, match="lora_adapter_metadata"):
        peft_alphas({}, {"lora_adapter_metadata": header}, "style.safetensors")

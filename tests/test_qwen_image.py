"""Qwen-Image as a family on the seam: model resolution, plain generation equal to diffusers' QwenImagePipeline,
the regional processor's block invariant, LoRA key reading, batching, and the layout checks it adds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline
from safetensors.torch import load_file, save_file

from eligen.pipeline import model_info
from eligen.pipeline.conditioning import batched
from eligen.pipeline.families.qwen_image.transformer import text_rotary, use_regional_processor
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.hub import DEFAULT_LORAS
from eligen.pipeline.layout import LayoutError, parse_layout
from eligen.pipeline.layout_warnings import LayoutWarning
from eligen.pipeline.lora import LoraError, apply_loras, remove_loras
from eligen.pipeline.regional_attention import regional_attention_mask

SIZE = [96, 64]  # latent 8 x 12, tokens 4 x 6


def _layout(model: Path, **fields: object):
    return parse_layout({"model": str(model), "size": SIZE, "steps": 3, "prompt": "a red cat on the sea",
                         "loras": [], **fields})


def test_hub_id_and_folder_resolve_to_qwen_image_without_loading(tiny_qwen_model: Path) -> None:
    assert model_info.model_family("Qwen/Qwen-Image").name == "qwen-image"  # no network: a table of known ids
    assert model_info.model_family("black-forest-labs/FLUX.1-dev").name == "flux"
    assert model_info.model_family(str(tiny_qwen_model)).name == "qwen-image"
    assert model_info.scale_factor(str(tiny_qwen_model)) == 8
    assert model_info.default_max_sequence_length("Qwen/Qwen-Image") == 1024
    [lora] = DEFAULT_LORAS["Qwen/Qwen-Image"]
    assert (lora.path, lora.file) == ("DiffSynth-Studio/Qwen-Image-EliGen-V2", "model.safetensors")


def test_default_lora_and_loras_off(tiny_qwen_pipe: EligenPipeline, tiny_qwen_model: Path) -> None:
    as_hub = EligenPipeline(tiny_qwen_pipe.family, "Qwen/Qwen-Image")
    plain = parse_layout({"model": "Qwen/Qwen-Image", "prompt": "a cat"})
    assert as_hub.lora_specs(plain) == DEFAULT_LORAS["Qwen/Qwen-Image"]
    assert as_hub.lora_specs(plain.model_copy(update={"loras": []})) == []


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_no_entities_equal_diffusers_qwen_image_pipeline(tiny_qwen_pipe: EligenPipeline, tiny_qwen_model: Path,
                                                         cfg: float) -> None:
    """With the rescaled CFG option, bit for bit: latents and decoded image."""
    layout = _layout(tiny_qwen_model, cfg=cfg, negative_prompt="blurry low quality", cfg_rescale=True)
    positive, negative = tiny_qwen_pipe.prepare(layout)
    ours = tiny_qwen_pipe.sample(layout, positive, negative, seed=7)
    reference = QwenImagePipeline.from_pretrained(tiny_qwen_model, dtype=torch.float32)

    def run(output_type: str):
        return reference(prompt=layout.prompt, negative_prompt=layout.negative_prompt, true_cfg_scale=cfg,
                         height=SIZE[1], width=SIZE[0], num_inference_steps=3, output_type=output_type,
                         generator=torch.Generator("cpu").manual_seed(7)).images

    assert torch.equal(ours, run("latent"))
    assert np.array_equal(np.asarray(tiny_qwen_pipe.decode(ours, layout)), np.asarray(run("pil")[0]))
    if cfg > 1:  # the reference's plain CFG (the default) is a different, measurable result
        plain = tiny_qwen_pipe.sample(layout.model_copy(update={"cfg_rescale": False}), positive, negative, seed=7)
        assert (plain - ours).abs().max() > 1e-4


def test_perturbing_an_entity_prompt_stays_in_its_region(tiny_qwen_pipe: EligenPipeline) -> None:
    """In one block, entity 0's prompt reaches only region 0's image tokens and its own group."""
    model = tiny_qwen_pipe.transformer
    use_regional_processor(model)
    block = model.transformer_blocks[0]
    lengths, n_image, dim = [4, 3, 5], 24, model.inner_dim
    regions = torch.zeros(2, n_image, dtype=torch.bool)
    regions[0, :8] = True
    regions[1, 5:15] = True  # overlaps region 0 on tokens 5..7
    mask = regional_attention_mask(regions, lengths, torch.float32, "cpu")
    generator = torch.Generator().manual_seed(1)
    text = torch.randn(1, sum(lengths), dim, generator=generator)
    image = torch.randn(1, n_image, dim, generator=generator)
    temb = torch.randn(1, dim, generator=generator)
    ids = torch.cat([torch.arange(n) for n in lengths])
    rotary = model.pos_embed([(1, 4, 6)], device="cpu", max_txt_seq_len=max(lengths))
    kwargs = {"attention_mask": mask, "text_rotary": text_rotary(model, ids, 8, 12)}

    def run(txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return block(image, txt, None, temb, image_rotary_emb=rotary, joint_attention_kwargs=kwargs)

    base_txt, base_img = run(text)
    perturbed = text.clone()
    perturbed[:, :lengths[0]] += torch.randn(1, lengths[0], dim, generator=generator)
    new_txt, new_img = run(perturbed)
    img_change = (new_img - base_img).abs().amax(dim=-1)[0]
    assert torch.all(img_change[~regions[0]] == 0), "image tokens outside region 0 changed"
    assert torch.all(img_change[regions[0]] > 0), "image tokens inside region 0 did not change"
    txt_change = (new_txt - base_txt).abs().amax(dim=-1)[0]
    assert torch.all(txt_change[lengths[0]:] == 0), "another prompt group changed"
    assert torch.all(txt_change[:lengths[0]] > 0)


def test_text_rotary_restarts_per_group(tiny_qwen_pipe: EligenPipeline) -> None:
    """Group i's rows are the model's own text table for a text of its length (diffusers' `pos_embed`)."""
    model = tiny_qwen_pipe.transformer
    table = text_rotary(model, torch.cat([torch.arange(3), torch.arange(5)]), 8, 12)
    own = model.pos_embed([(1, 4, 6)], device="cpu", max_txt_seq_len=5)[1]
    assert torch.equal(table[:3], own[:3]) and torch.equal(table[3:], own)


def _regional(tiny_qwen_pipe: EligenPipeline, tiny_qwen_model: Path, **fields: object):
    layout = _layout(tiny_qwen_model, cfg=4.0, negative_prompt="blurry", entities=[
        {"prompt": "a red cat", "box": [0, 0, 48, 64]}, {"prompt": "a blue dog with a hat", "box": [40, 0, 96, 64]}],
        **fields)
    return layout, *tiny_qwen_pipe.prepare(layout)


def test_groups_have_their_own_lengths_and_positions(tiny_qwen_pipe: EligenPipeline, tiny_qwen_model: Path) -> None:
    _, positive, negative = _regional(tiny_qwen_pipe, tiny_qwen_model)
    encode = tiny_qwen_pipe.prompt_encoder(1024)
    lengths = [encode.token_count(p) for p in ("a red cat", "a blue dog with a hat", "a red cat on the sea")]
    assert positive.prompt_embeds.shape[1] == sum(lengths)
    assert torch.equal(positive.text_ids, torch.cat([torch.arange(n) for n in lengths]))
    assert negative.attention_mask is None
    assert torch.equal(negative.text_ids, torch.arange(encode.token_count("blurry")))


def test_batched_branches_keep_their_positions(tiny_qwen_pipe: EligenPipeline, tiny_qwen_model: Path) -> None:
    """CFG's branches in one batch (texts of different lengths, different positions) give the same latents up to
    float32 rounding (the padded keys are masked; SDPA sums over another length), as do the split attention form."""
    layout, positive, negative = _regional(tiny_qwen_pipe, tiny_qwen_model)
    both = batched([positive, negative], 24)
    assert both.text_ids.shape == (2, positive.prompt_embeds.shape[1])
    single = tiny_qwen_pipe.sample(layout, positive, negative, seed=2)
    assert (tiny_qwen_pipe.sample(layout, positive, negative, seed=2, batch_cfg=True) - single).abs().max() < 1e-4
    split = tiny_qwen_pipe.sample(layout, positive, negative, seed=2, attention="split")
    assert (split - single).abs().max() < 1e-4


def test_flex_and_long_texts_are_refused_by_field(tiny_qwen_pipe: EligenPipeline, tiny_qwen_model: Path,
                                                  tiny_pipe: EligenPipeline) -> None:
    with pytest.raises(LayoutError, match=r"attention.*dense, split"):
        _regional(tiny_qwen_pipe, tiny_qwen_model, attention="flex")
    assert tiny_qwen_pipe.max_sequence_length(_layout(tiny_qwen_model, max_sequence_length=1024)) == 1024
    with pytest.raises(LayoutError, match=r"max_sequence_length.*at most 512 for a flux model"):
        tiny_pipe.max_sequence_length(_layout(tiny_qwen_model, max_sequence_length=600))
    with pytest.raises(LayoutError, match="max_sequence_length"):
        _layout(tiny_qwen_model, max_sequence_length=1025)


def _lora_file(path: Path, transformer: torch.nn.Module, key: str, rank: int = 2, **extra: torch.Tensor) -> Path:
    linear = transformer.get_submodule("transformer_blocks.1.attn.to_q")
    generator = torch.Generator().manual_seed(0)
    tensors = {key.format(f="A"): torch.randn(rank, linear.in_features, generator=generator),
               key.format(f="B"): torch.randn(linear.out_features, rank, generator=generator), **extra}
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("key", [
    "transformer_blocks.1.attn.to_q.lora_{f}.default.weight",  # the released files (the reference's export)
    "transformer_blocks.1.attn.to_q.lora_{f}.weight",
    "transformer.transformer_blocks.1.attn.to_q.lora_{f}.weight",  # diffusers / peft
    "diffusion_model.transformer_blocks.1.attn.to_q.lora_{f}.weight",  # ComfyUI
])
def test_lora_key_styles_give_w_plus_b_a(tiny_qwen_pipe: EligenPipeline, tmp_path: Path, key: str) -> None:
    path = _lora_file(tmp_path / "l.safetensors", tiny_qwen_pipe.transformer, key)
    [delta] = tiny_qwen_pipe.family.load_lora(path)
    assert delta.module == "transformer_blocks.1.attn.to_q" and delta.scale == 1.0
    linear = tiny_qwen_pipe.transformer.get_submodule(delta.module)
    x = torch.randn(3, linear.in_features)
    expected = torch.nn.functional.linear(x, linear.weight + delta.up @ delta.down, linear.bias)
    apply_loras(tiny_qwen_pipe.transformer, [([delta], 1.0)])
    try:
        torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)  # two float32 summation orders
    finally:
        remove_loras(tiny_qwen_pipe.transformer)


def test_lora_alpha_and_kohya_names(tiny_qwen_pipe: EligenPipeline, tmp_path: Path) -> None:
    path = _lora_file(tmp_path / "a.safetensors", tiny_qwen_pipe.transformer,
                      "transformer_blocks.1.attn.to_q.lora_{f}.weight", rank=4,
                      **{"transformer_blocks.1.attn.to_q.alpha": torch.tensor(2.0)})
    assert tiny_qwen_pipe.family.load_lora(path)[0].scale == 0.5
    down = _lora_file(tmp_path / "d.safetensors", tiny_qwen_pipe.transformer,
                      "transformer_blocks.1.attn.to_q.lora_{f}.weight")
    renamed = tmp_path / "ud.safetensors"
    save_file({k.replace("lora_A", "lora_down").replace("lora_B", "lora_up"): v for k, v in load_file(down).items()},
              str(renamed))
    assert tiny_qwen_pipe.family.load_lora(renamed)[0].module == "transformer_blocks.1.attn.to_q"


def test_unmatched_lora_keys_are_listed(tiny_qwen_pipe: EligenPipeline, tmp_path: Path) -> None:
    path = _lora_file(tmp_path / "bad.safetensors", tiny_qwen_pipe.transformer,
                      "transformer_blocks.1.attn.to_q.lora_{f}.weight",
                      **{"blocks.0.attn.a_to_qkv.lora_A.weight": torch.zeros(2, 4),  # a FLUX reference name
                         "transformer_blocks.0.attn.to_k.lora_A.weight": torch.zeros(2, 64)})  # no lora_B
    with pytest.raises(LoraError) as error:
        tiny_qwen_pipe.family.load_lora(path)
    message = str(error.value)
    assert str(path) in message and "blocks.0.attn.a_to_qkv.lora_A.weight" in message
    assert "transformer_blocks.0.attn.to_k: lora_B missing" in message
    assert "transformer_blocks.1.attn.to_q" not in message


def test_full_size_model_is_refused_on_the_cpu() -> None:
    from eligen.pipeline.families.qwen_image.load import check_device
    from eligen.pipeline.model_info import ModelLoadError

    config = {"num_layers": 60, "num_attention_heads": 24, "attention_head_dim": 128}
    with pytest.raises(ModelLoadError, match=r"about 20B parameters.*--device cpu"):
        check_device("Qwen/Qwen-Image", config, torch.device("cpu"), explicit=False)
    check_device("Qwen/Qwen-Image", config, torch.device("cpu"), explicit=True)


@pytest.mark.parametrize(("global_tokens", "entity_tokens"), [(4096, 1024), (4097, 1025)])
def test_the_truncation_warnings_fire_at_the_limits_the_model_reads(
        tiny_qwen_pipe: EligenPipeline, tiny_qwen_model: Path, global_tokens: int, entity_tokens: int) -> None:
    """Qwen-Image reads 4096 tokens of the global and negative prompt's group and 1024 of an entity's: a warning at
    one token more, none at the limit."""
    def words(n: int) -> str:  # 'a' and each ' red' are one token of the tiny tokenizer; the template closes with 5
        return "a" + " red" * (n - 6)

    layout = _layout(tiny_qwen_model, prompt=words(global_tokens), negative_prompt=words(global_tokens), cfg=2.0,
                     entities=[{"prompt": words(entity_tokens), "box": [0, 0, 48, 32]}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayoutWarning)
        tiny_qwen_pipe.prepare(layout, source="long.yaml")
    messages = [str(w.message) for w in caught if issubclass(w.category, LayoutWarning)]
    if global_tokens == 4096:
        assert messages == []
    else:
        cut = "the last token is dropped\n  hint: shorten the prompt"
        assert messages == [f"long.yaml: prompt: 4097 Qwen2.5-VL tokens, the model reads 4096: {cut}",
                            f"long.yaml: negative_prompt: 4097 Qwen2.5-VL tokens, the model reads 4096: {cut}",
                            f"long.yaml: entities[0].prompt: 1025 Qwen2.5-VL tokens, the model reads 1024: {cut}"]


def test_the_training_cache_keeps_a_long_entity_prompt_as_the_entity_unit_reads_it(
        tiny_qwen_pipe: EligenPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt read at two lengths (global 4096, entity 1024) is cached at both; a short one once."""
    from types import SimpleNamespace

    from PIL import Image

    from eligen.pipeline.conditioning import PromptTable
    from eligen.pipeline.train import cache as train_cache

    long, short = "a" + " red" * 1100, "a red cat"
    sample = SimpleNamespace(index=0, bucket=(32, 32), layout=SimpleNamespace(prompt=long),
                             entity_prompts=[long, short])
    monkeypatch.setattr(train_cache, "load_image", lambda _: Image.new("RGB", (32, 32)))
    cache = train_cache.TrainCache(tmp_path)
    train_cache.build_cache(cache, tiny_qwen_pipe, [sample], 1024)
    encode = tiny_qwen_pipe.prompt_encoder(1024)
    (embeds, pooled, entity), (short_embeds, _, short_entity) = cache.text(long), cache.text(short)
    assert pooled is None and short_entity is None
    assert torch.equal(embeds, encode(long)[0]) and embeds.shape[1] == 1106
    assert torch.equal(entity, encode.entity(long)) and entity.shape[1] == 1024
    table = PromptTable({long: (embeds, None), short: (short_embeds, None)}, tiny_qwen_pipe.family.text_ids,
                        {long: entity})
    assert torch.equal(table.entity(long), entity) and torch.equal(table.entity(short), encode.entity(short))

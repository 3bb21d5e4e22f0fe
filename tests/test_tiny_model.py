"""Tests for the offline tiny FLUX folder (eligen.pipeline.shapes.tiny_flux)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from eligen.pipeline.shapes.tiny_flux import build_tiny_flux

SENTENCE = "A photo of 3 red cats, sitting on the table! (Price: $42.50; 100% off?) -- #1 [ok] & x/y @ 9:30."
WEIGHT_FILES = (
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
)


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny FLUX folder shared by the tests of this module."""
    return build_tiny_flux(tmp_path_factory.mktemp("tiny") / "flux")


@pytest.fixture(scope="module")
def pipe(tiny_flux: Path) -> FluxPipeline:
    """The tiny folder loaded through the same from_pretrained path users take."""
    return FluxPipeline.from_pretrained(tiny_flux, dtype=torch.float32)


def _run(pipe: FluxPipeline, prompt: str, max_sequence_length: int) -> np.ndarray:
    result = pipe(
        prompt=prompt,
        height=128,
        width=128,
        num_inference_steps=2,
        max_sequence_length=max_sequence_length,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )
    return result.images


def test_folder_layout(tiny_flux: Path) -> None:
    index = json.loads((tiny_flux / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    expected = {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "vae": ["diffusers", "AutoencoderKL"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
    }
    for name, entry in expected.items():
        assert index[name] == entry, name
    for rel in (*WEIGHT_FILES, "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"):
        assert (tiny_flux / rel).is_file(), rel
    assert json.loads((tiny_flux / "eligen.json").read_text()) == {
        "max_sequence_length": 32,
        "note": "random weights: images are noise",
    }
    size = sum(f.stat().st_size for f in tiny_flux.rglob("*") if f.is_file())
    assert size < 5 * 2**20
    # Atomic write: no temporary sibling is left behind.
    assert [p.name for p in tiny_flux.parent.iterdir()] == ["flux"]


def test_loaded_configs(pipe: FluxPipeline) -> None:
    assert pipe.vae_scale_factor == 8
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert pipe.vae.config.latent_channels == 16
    assert pipe.vae.config.scaling_factor == pytest.approx(0.3611)
    assert pipe.vae.config.shift_factor == pytest.approx(0.1159)
    t = pipe.transformer.config
    assert (t.in_channels, t.patch_size, t.num_layers, t.num_single_layers) == (64, 1, 2, 2)
    assert sum(t.axes_dims_rope) == t.attention_head_dim
    assert t.guidance_embeds is True
    assert t.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert t.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    s = pipe.scheduler.config
    assert (s.shift, s.use_dynamic_shifting, s.base_shift, s.max_shift) == (3.0, True, 0.5, 1.15)
    assert (s.base_image_seq_len, s.max_image_seq_len) == (256, 4096)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer_2.model_max_length == 32


def test_pipeline_runs_end_to_end(pipe: FluxPipeline, tiny_flux: Path) -> None:
    max_len = json.loads((tiny_flux / "eligen.json").read_text())["max_sequence_length"]
    images = _run(pipe, SENTENCE, max_len)
    assert images.shape == (1, 128, 128, 3)
    assert np.isfinite(images).all()
    # Same seed, same image: the tiny model is usable for exact comparisons.
    np.testing.assert_array_equal(images, _run(pipe, SENTENCE, max_len))


def test_tokenizers_cover_english_text(pipe: FluxPipeline) -> None:
    clip, t5 = pipe.tokenizer, pipe.tokenizer_2
    assert len(clip) == pipe.text_encoder.config.vocab_size
    assert len(t5) == pipe.text_encoder_2.config.vocab_size
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert pipe.text_encoder.config.eos_token_id == clip.eos_token_id

    clip_ids = clip(SENTENCE, padding="max_length", max_length=77, truncation=True).input_ids
    assert clip_ids[0] == clip.bos_token_id
    assert clip.eos_token_id in clip_ids
    assert max(clip_ids) < pipe.text_encoder.config.vocab_size
    assert clip.unk_token_id not in clip_ids[1 : clip_ids.index(clip.eos_token_id)]

    t5_ids = t5(SENTENCE, padding="max_length", max_length=128, truncation=True).input_ids
    assert max(t5_ids) < pipe.text_encoder_2.config.vocab_size
    assert t5.unk_token_id not in t5_ids
    assert t5.eos_token_id in t5_ids
    assert t5.decode(t5_ids, skip_special_tokens=True) == SENTENCE

    # Merges / word pieces make common words single tokens.
    for word in ("the", "photo", "mountain", "beautiful"):
        assert len(clip(word, add_special_tokens=False).input_ids) == 1, word
        assert len(t5(word, add_special_tokens=False).input_ids) == 1, word


def test_same_seed_same_weights(tmp_path: Path) -> None:
    rng_before = torch.get_rng_state()
    first = build_tiny_flux(tmp_path / "a", seed=3)
    second = build_tiny_flux(tmp_path / "b", seed=3)
    other = build_tiny_flux(tmp_path / "c", seed=4)
    assert torch.equal(torch.get_rng_state(), rng_before), "the caller's RNG must be left untouched"
    for rel in WEIGHT_FILES:
        a, b = load_file(first / rel), load_file(second / rel)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (rel, key)
    a = load_file(first / WEIGHT_FILES[0])
    c = load_file(other / WEIGHT_FILES[0])
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_options(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = build_tiny_flux(empty, max_sequence_length=16, guidance_embeds=False)
    assert folder == empty.absolute()
    assert json.loads((folder / "eligen.json").read_text())["max_sequence_length"] == 16
    pipe = FluxPipeline.from_pretrained(folder, dtype=torch.float32)
    assert pipe.transformer.config.guidance_embeds is False
    assert pipe.tokenizer_2.model_max_length == 16
    images = _run(pipe, "a dog", 16)
    assert images.shape == (1, 128, 128, 3)
    assert np.isfinite(images).all()


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_flux(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        build_tiny_flux(a_file)


def test_rejects_bad_sequence_length(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_tiny_flux(tmp_path / "x", max_sequence_length=0)
    assert not (tmp_path / "x").exists()

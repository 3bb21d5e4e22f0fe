"""Build a tiny, random-weight Qwen-Image folder offline, in the diffusers layout of ``Qwen/Qwen-Image``.

``model_index.json``, ``transformer/`` (``QwenImageTransformer2DModel``), ``vae/`` (``AutoencoderKLQwenImage``,
with Qwen-Image's latents_mean/std), ``text_encoder/`` (``Qwen2_5_VLForConditionalGeneration``), ``tokenizer/``
(a ``Qwen2Tokenizer`` built in memory) and ``scheduler/`` (``FlowMatchEulerDiscreteScheduler`` with Qwen-Image's
config), so that ``diffusers.QwenImagePipeline.from_pretrained(folder)`` loads it like the real model. Nothing is
downloaded; its images are noise.

The tokenizer is a byte-level BPE with Qwen's pre-tokenizer and special tokens, and merges that make one token of
every word of Qwen-Image's prompt template, so the template's system turn and ``<|im_start|>user\\n`` are exactly
34 tokens, as with the real tokenizer: the pipeline's fixed drop of 34 then drops the same pieces here as on the
real model (checked when the folder is built). Any other text (Chinese included) falls back to byte tokens.
"""

from __future__ import annotations

import itertools
import json
import shutil
import uuid
from pathlib import Path

import torch

from .tiny_folders import check_target, publish, quiet_transformers_progress

__all__ = ["build_tiny_qwen_image"]

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip

# Words of Qwen-Image's prompt template (each one token in Qwen's vocabulary), then common prompt words.
_TEMPLATE_WORDS = (
    "system", "Describe", " the", " image", " by", " detailing", " color", " shape", " size", " texture",
    " quantity", " text", " spatial", " relationships", " of", " objects", " and", " background", "user",
    "assistant",
)  # fmt: skip
_COMMON_WORDS = (
    "a", "an", "the", "in", "on", "with", "at", "to", "red", "green", "blue", "yellow", "white", "black", "small",
    "large", "cat", "dog", "man", "woman", "girl", "boy", "tree", "sky", "sea", "house", "car", "hat", "dress",
    "photo", "poster", "left", "right", "top", "bottom", "blurry", "low", "quality",
)  # fmt: skip

TEMPLATE_DROP = 34  # QwenImagePipeline.prompt_template_encode_start_idx (and the reference's drop_idx)
TEMPLATE_HEADER = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n")

# scheduler/scheduler_config.json of Qwen/Qwen-Image (exponential time shift, dynamic mu, terminal 0.02).
QWEN_IMAGE_SCHEDULER: dict[str, object] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}  # fmt: skip

TEXT_WIDTH = 32  # Qwen2.5-VL hidden size == transformer joint_attention_dim
TRANSFORMER_CONFIG: dict[str, object] = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2, "attention_head_dim": 32,
    "num_attention_heads": 2, "joint_attention_dim": TEXT_WIDTH, "axes_dims_rope": (8, 12, 12),
}  # fmt: skip
VAE_CONFIG: dict[str, object] = {
    "base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_scales": [],
    "temperal_downsample": [False, True, True],
}  # fmt: skip


def _byte_symbols(text: str) -> str:
    """`text` in the byte-level alphabet (space -> 'Ġ', newline -> 'Ċ'; ASCII letters map to themselves)."""
    from tokenizers import pre_tokenizers

    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    return "".join(piece for piece, _ in pieces)


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply `ranks` to one pre-token the way a BPE model does: lowest-rank pair first, leftmost first."""
    symbols = list(symbols)
    while len(symbols) > 1:
        known = [(ranks[pair], i) for i, pair in enumerate(itertools.pairwise(symbols)) if pair in ranks]
        if not known:
            break
        _, i = min(known)
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte alphabet plus merges that turn each of `words` into one token.

    A merge added later has a higher rank than every earlier one, so it never changes how an earlier word merges.
    """
    from tokenizers import pre_tokenizers

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _bpe(list(_byte_symbols(word)), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = _bpe(symbols, ranks)
    return vocab, merges


def build_tokenizer():
    """A Qwen2Tokenizer made in memory: Qwen's pre-tokenizer and special tokens, a small byte-level BPE vocabulary."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    words = _TEMPLATE_WORDS + _COMMON_WORDS + tuple(" " + w for w in _COMMON_WORDS)
    vocab, merges = _vocab_and_merges(words)
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None)
    tokenizer.add_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS], special_tokens=True)
    n = len(tokenizer(TEMPLATE_HEADER).input_ids)
    if n != TEMPLATE_DROP:
        raise AssertionError(f"tiny tokenizer: the template header is {n} tokens, expected {TEMPLATE_DROP}")
    return tokenizer


def _text_encoder(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": TEXT_WIDTH, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
                     # head size 16: the three mrope sections cover its 8 frequency pairs
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                       "out_hidden_size": TEXT_WIDTH, "fullatt_block_indexes": [0], "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # HF's initializer (std 0.02) leaves the hidden states nearly prompt-independent; wider embeddings make
    # different prompts give clearly different conditioning in the tests.
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight.normal_(0.0, 1.0)
    return model


def _save(folder: Path) -> None:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    tokenizer = build_tokenizer()
    components = {"text_encoder": _text_encoder(tokenizer), "transformer": QwenImageTransformer2DModel(
        **TRANSFORMER_CONFIG).eval(), "vae": AutoencoderKLQwenImage(**VAE_CONFIG).eval(),
        "tokenizer": tokenizer, "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER)}
    for name, component in components.items():
        component.save_pretrained(folder / name)
    model_index = {
        "_class_name": "QwenImagePipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n", encoding="utf-8")
    meta = {"note": "random weights: images are noise"}
    (folder / "eligen.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def build_tiny_qwen_image(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight Qwen-Image folder (diffusers layout) and return its absolute path.

    Weights depend only on `seed` (the caller's torch RNG state is left untouched). The folder is built in a
    temporary sibling and renamed into place, so it never appears half-written.

    Raises:
        FileExistsError: If `out_dir` exists and is not an empty directory.
    """
    out = Path(out_dir).expanduser().absolute()
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    try:
        with torch.random.fork_rng(devices=[]), quiet_transformers_progress():
            torch.manual_seed(seed)
            tmp.mkdir()
            _save(tmp)
        publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out

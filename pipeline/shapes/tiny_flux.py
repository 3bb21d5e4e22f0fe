"""Build a tiny, random-weight FLUX model folder offline.

The folder has the diffusers layout of ``black-forest-labs/FLUX.1-dev`` (``model_index.json``,
``transformer/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``,
``scheduler/``) so that ``diffusers.FluxPipeline.from_pretrained(folder)`` loads it. Every component
is shrunk to a few thousand parameters, the tokenizers are built in memory, and nothing is downloaded.
The test suite uses it as a fixture and users can try the tool offline with it; its images are noise.
"""

from __future__ import annotations

import itertools
import json
import shutil
import uuid
from pathlib import Path

import torch

from .tiny_folders import check_target, publish, quiet_transformers_progress

__all__ = ["build_tiny_flux"]

# Words that get whole-word tokens (through BPE merges for CLIP, as pieces for T5), so that ordinary
# prompts need fewer tokens than one per character.
_COMMON_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "in", "on", "with", "at", "to", "for", "by", "is", "are", "from",
    "photo", "image", "picture", "painting", "drawing", "style", "background", "foreground", "left",
    "right", "top", "bottom", "center", "middle", "red", "green", "blue", "yellow", "white", "black",
    "orange", "purple", "pink", "brown", "gray", "small", "large", "big", "little", "old", "young",
    "man", "woman", "girl", "boy", "person", "people", "child", "dog", "cat", "bird", "horse", "fish",
    "tree", "trees", "flower", "flowers", "grass", "sky", "cloud", "clouds", "sun", "moon", "star",
    "water", "sea", "river", "lake", "mountain", "mountains", "forest", "city", "street", "house",
    "building", "car", "road", "table", "chair", "cup", "book", "hat", "shirt", "dress", "hair",
    "eyes", "face", "hand", "light", "dark", "night", "day", "snow", "rain", "fire", "stone", "wood",
    "glass", "metal", "wearing", "holding", "sitting", "standing", "walking", "beautiful", "detailed",
    "realistic", "high", "quality", "very", "one", "two", "three",
)  # fmt: skip

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_CLIP_MAX_LENGTH = 77
_END_OF_WORD = "</w>"

_T5_PAD, _T5_EOS, _T5_UNK = "<pad>", "</s>", "<unk>"
_T5_SPACE = "\u2581"  # "▁", SentencePiece's word-boundary marker

# Scheduler config of FLUX.1-dev (scheduler/scheduler_config.json).
_FLUX_DEV_SCHEDULER: dict[str, object] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

# Width of every tiny text-encoder hidden state (CLIP hidden size == T5 d_model == 32).
_TEXT_WIDTH = 32


def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character, as GPT-2/CLIP byte-level BPE does."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _bpe_symbols(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split one CLIP pre-token into BPE symbols the way the ``tokenizers`` BPE model does.

    The last character carries the end-of-word suffix; the present pair of lowest rank is merged
    (leftmost first) until no pair of ``ranks`` is present.
    """
    symbols = [*word[:-1], word[-1] + _END_OF_WORD]
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(symbols))]
        known = [(rank, i) for rank, i in pairs if rank is not None]
        if not known:
            break
        _, i = min(known)
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _clip_vocab_and_merges(words: tuple[str, ...] = _COMMON_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level CLIP vocabulary: all 256 byte symbols (plain and word-final), merges, specials.

    Every byte has a symbol, so any text tokenizes without unknown tokens. Merges are added one at a
    time, each ranked after all earlier ones, until every common word is a single token; a new merge
    only fires once the earlier merges are exhausted, so words finished earlier stay single tokens.
    """
    symbols = list(_bytes_to_unicode().values())
    tokens: list[str] = [*symbols, *(s + _END_OF_WORD for s in symbols)]
    ranks: dict[tuple[str, str], int] = {}
    known = set(tokens)
    for word in words:
        pieces = _bpe_symbols(word, ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            if pieces[0] + pieces[1] not in known:
                tokens.append(pieces[0] + pieces[1])
                known.add(pieces[0] + pieces[1])
            pieces = _bpe_symbols(word, ranks)
    tokens += [_CLIP_BOS, _CLIP_EOS]
    return {tok: idx for idx, tok in enumerate(tokens)}, list(ranks)


def _t5_vocab(words: tuple[str, ...] = _COMMON_WORDS) -> list[tuple[str, float]]:
    """Unigram T5 vocabulary: <pad>=0, </s>=1, <unk>=2, then "▁", characters and "▁"-words.

    Each printable ASCII character exists both alone and with the "▁" prefix, so any English text is
    covered; whole common words have higher scores than their spelling so Unigram prefers them.
    """
    vocab: list[tuple[str, float]] = [(_T5_PAD, 0.0), (_T5_EOS, 0.0), (_T5_UNK, 0.0), (_T5_SPACE, -3.0)]
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab += [(c, -6.0) for c in chars]
    vocab += [(_T5_SPACE + c, -5.0) for c in chars]
    seen = {piece for piece, _ in vocab}
    for word in words:
        for form in (word, word.capitalize()):
            piece = _T5_SPACE + form
            if piece not in seen:
                vocab.append((piece, -4.0))
                seen.add(piece)
    return vocab


def _build_tokenizers(max_sequence_length: int, words: tuple[str, ...] = _COMMON_WORDS) -> tuple[object, object]:
    """Build the CLIP and T5 tokenizers in memory (no files, no downloads); each of `words` is one token."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    vocab, merges = _clip_vocab_and_merges(words)
    clip_tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=_CLIP_EOS,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        model_max_length=_CLIP_MAX_LENGTH,
    )
    t5_tokenizer = T5TokenizerFast(
        vocab=_t5_vocab(words),
        eos_token=_T5_EOS,
        unk_token=_T5_UNK,
        pad_token=_T5_PAD,
        extra_ids=0,
        model_max_length=max_sequence_length,
    )
    return clip_tokenizer, t5_tokenizer


def _build_components(max_sequence_length: int, guidance_embeds: bool) -> dict[str, object]:
    """Instantiate every FluxPipeline component at tiny size, with weights from the current torch RNG."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = _build_tokenizers(max_sequence_length)

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        out_channels=None,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_WIDTH,
        pooled_projection_dim=_TEXT_WIDTH,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=16,
        norm_num_groups=8,
        sample_size=1024,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TEXT_WIDTH,
            intermediate_size=64,
            projection_dim=_TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=_TEXT_WIDTH,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            tie_word_embeddings=False,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**_FLUX_DEV_SCHEDULER)
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
    }


def _write_compat_files(folder: Path, clip_vocab: dict[str, int], clip_merges: list[tuple[str, str]]) -> None:
    """Add the files FLUX.1-dev's folder has that transformers 5 no longer writes by itself.

    ``tokenizer/vocab.json`` and ``tokenizer/merges.txt`` (the slow CLIP tokenizer of transformers 4
    needs them; ``tokenizer.json`` stays the primary file) and the ``T5TokenizerFast`` class name of
    ``tokenizer_2`` in ``model_index.json`` (an alias of ``T5Tokenizer`` in transformers 5; in
    transformers 4 it is the class that reads ``tokenizer.json``). An empty ``extra_special_tokens``
    list is dropped from the tokenizer configs: transformers 4 expects a dict there and fails on a list.
    """
    for sub in ("tokenizer", "tokenizer_2"):
        config_path = folder / sub / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("extra_special_tokens") == []:
            del config["extra_special_tokens"]
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tok_dir = folder / "tokenizer"
    (tok_dir / "vocab.json").write_text(json.dumps(clip_vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in clip_merges)
    (tok_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_flux(
    out_dir: str | Path, *, seed: int = 0, max_sequence_length: int = 32, guidance_embeds: bool = True
) -> Path:
    """Write a tiny random-weight FLUX folder (diffusers layout) and return its path.

    The folder loads with ``diffusers.FluxPipeline.from_pretrained`` exactly like FLUX.1-dev, but each
    model has a few layers of width 32, so building takes well under a second (once diffusers and
    transformers are imported) and the folder is about 1.4 MB. Weights depend only on ``seed`` (the
    caller's torch RNG state is left untouched).

    Args:
        out_dir: Destination folder. It must not exist or be an empty directory. The folder is built in
            a temporary sibling and renamed into place, so it never appears half-written.
        seed: Seed for the random weights.
        max_sequence_length: T5 token length; stored as ``tokenizer_2``'s ``model_max_length`` and in
            ``eligen.json`` (the project's default T5 length for this folder).
        guidance_embeds: Whether the transformer has a guidance embedding (FLUX.1-dev: True,
            FLUX.1-schnell: False).

    Returns:
        The absolute path of the written folder.

    Raises:
        FileExistsError: If ``out_dir`` exists and is not an empty directory.
        ValueError: If ``max_sequence_length`` is not in 1..512 (FluxPipeline's limit).
    """
    if not 1 <= max_sequence_length <= 512:
        raise ValueError(f"max_sequence_length must be in 1..512, got {max_sequence_length}")
    out = Path(out_dir).expanduser().absolute()
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    from diffusers import FluxPipeline

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            components = _build_components(max_sequence_length, guidance_embeds)
        pipe = FluxPipeline(**components)
        with quiet_transformers_progress():
            pipe.save_pretrained(tmp, safe_serialization=True)
        _write_compat_files(tmp, *_clip_vocab_and_merges())
        meta = {"max_sequence_length": max_sequence_length, "note": "random weights: images are noise"}
        (tmp / "eligen.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out

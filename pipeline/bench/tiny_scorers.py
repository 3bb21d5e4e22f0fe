"""Tiny random-weight scorer models built offline from configs: GroundingDINO, SAM and CLIP, with processors.

Each is saved with ``save_pretrained`` into its own folder, so the scorers load it through the same
``from_pretrained`` code as the real models. The tokenizers are built in memory: a WordPiece vocabulary of
letters and a few words for GroundingDINO's BERT, a byte-level BPE vocabulary without merges (one token per
character) for CLIP. Nothing is downloaded; the weights are random (seeded), so the scores mean nothing.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

__all__ = ["write_tiny_scorers"]

_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BERT_WORDS = ("a", "an", "the", "red", "yellow", "green", "blue", "white", "black", "brown")
_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def _bert_vocab() -> dict[str, int]:
    """WordPiece vocabulary: specials, punctuation, digits, letters (word-initial and "##" continuations), words."""
    chars = string.ascii_lowercase + string.digits
    tokens = [*_BERT_SPECIALS, *string.punctuation, *chars, *("##" + c for c in chars)]
    tokens += [w for w in _BERT_WORDS if w not in tokens]
    return {token: i for i, token in enumerate(tokens)}


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) stands for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _clip_vocab() -> dict[str, int]:
    """CLIP vocabulary of single bytes, plain and word-final ("</w>"), and the two specials; no merges needed."""
    symbols = _bytes_to_unicode()
    tokens = [*symbols, *(s + "</w>" for s in symbols), _CLIP_BOS, _CLIP_EOS]
    return {token: i for i, token in enumerate(tokens)}


def _write_grounding_dino(folder: Path) -> None:
    """A GroundingDINO with a 4-stage Swin of width 8 and a 1-layer BERT of width 32; inputs 128 px."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = _bert_vocab()
    backbone = SwinConfig(image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=2, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(  # d_model: a multiple of GroupNorm's 32 groups; 2 decoder layers share bbox heads
        backbone_config=backbone, text_config=text, use_timm_backbone=False, d_model=32, num_queries=10,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_n_points=1, decoder_n_points=1, max_text_len=32,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    images = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    GroundingDinoProcessor(image_processor=images, tokenizer=BertTokenizer(vocab=vocab)).save_pretrained(folder)


def _write_sam(folder: Path) -> None:
    """A SAM with a 1-layer ViT of width 16 on 64 px inputs (4 x 4 patches) and a 1-layer mask decoder."""
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=1, num_attention_heads=1,
                             image_size=64, patch_size=16, mlp_dim=16, window_size=2, global_attn_indexes=[0],
                             num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=16, num_hidden_layers=1, num_attention_heads=2,
                                   iou_head_hidden_dim=16)
    SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
             ).save_pretrained(folder)
    images = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    SamProcessor(image_processor=images).save_pretrained(folder)


def _write_clip(folder: Path) -> None:
    """A CLIP with 1-layer text and vision towers of width 32 on 32 px inputs, projecting to 16."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = _clip_vocab()
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": vocab[_CLIP_BOS],
                     "eos_token_id": vocab[_CLIP_EOS], "pad_token_id": vocab[_CLIP_EOS]},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], unk_token=_CLIP_EOS, bos_token=_CLIP_BOS, eos_token=_CLIP_EOS,
                              pad_token=_CLIP_EOS, model_max_length=77)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def write_tiny_scorers(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write tiny "grounding-dino", "sam" and "clip" model folders under `folder`; returns name -> folder."""
    writers = {"grounding-dino": _write_grounding_dino, "sam": _write_sam, "clip": _write_clip}
    paths: dict[str, Path] = {}
    for name, write in writers.items():
        torch.manual_seed(seed)
        paths[name] = Path(folder) / name
        write(paths[name])
    return paths

"""How much T5's padding changes the embeddings of a prompt's own tokens (FLUX runs T5 without an attention mask).

    python benchmarks/t5_padding.py [--model FOLDER] [--lengths 64 128 512]

For each entity prompt, the embeddings of its own tokens (with the end token) encoded at its own length are
compared with the same tokens of the encoding padded to each length, the reference's `max_sequence_length`. This is
why `entity_tokens: auto` keeps the first tokens of the padded encoding instead of encoding the prompt unpadded:
the tokens it keeps are bit for bit the reference's, and only the padding tokens are left out of the DiT.
Without `--model` it builds the tiny random model, whose numbers say only that the effect exists; with a FLUX
folder (e.g. a local copy of FLUX.1-dev) they are the real T5-XXL's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from diffusers import FluxPipeline

from eligen.pipeline.families.flux.encode import PromptEncoder
from eligen.pipeline.shapes.tiny_flux import build_tiny_flux

PROMPTS = ["a red car", "an old woman wearing a blue dress", "a white house with a red door and two windows",
           "a small black dog sitting in the grass in front of a large green tree"]


def relative_change(pipe: FluxPipeline, prompt: str, padded_length: int) -> tuple[int, float, float]:
    """(own tokens n, max |a - b| / max |b|, mean cosine distance) of the n tokens, own length a vs padded b."""
    n = PromptEncoder(pipe, padded_length).token_count(prompt)
    own = PromptEncoder(pipe, n)(prompt)[0][0].float()
    padded = PromptEncoder(pipe, padded_length)(prompt)[0][0, :n].float()
    cosine = torch.nn.functional.cosine_similarity(own, padded, dim=-1)
    return n, ((own - padded).abs().max() / padded.abs().max()).item(), (1 - cosine).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a diffusers FLUX folder [default: the tiny one]")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 512])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or build_tiny_flux(Path(folder) / "tiny", max_sequence_length=512)
        pipe = FluxPipeline.from_pretrained(model, dtype=torch.float32)
    print(f"model: {args.model or 'tiny random model (T5 width 32, 2 layers)'}\n")
    print("| prompt | own tokens | padded to | max abs change / max abs | mean cosine distance |")
    print("|---|---|---|---|---|")
    for prompt in PROMPTS:
        for length in args.lengths:
            n, change, distance = relative_change(pipe, prompt, length)
            print(f"| {prompt} | {n} | {length} | {change:.3g} | {distance:.3g} |")


if __name__ == "__main__":
    main()

"""What LoRAs per entity cost: 3 entity LoRAs against one global LoRA of the same rank, and the two ways to restrict a
low-rank delta to some tokens.

    python benchmarks/entity_lora.py [--config medium|full] [--size 512] [--ranks 16 64] [--steps 2] [--repeats 5]
        [--threads N] [--dtype fp32|bf16]

Table 1 times whole sampling runs (`EligenPipeline.sample`, true CFG: two transformer passes per step) of a layout
with 3 entities (16% of the image each, overlapping; `benchmarks/regional_attention.py`'s layout) on the same
weights: without LoRA, with one global LoRA of rank r, and with 3 entity LoRAs of rank r (a different file per
entity). Every LoRA file has random factors on every per-token Linear of the blocks, so the global and the entity
LoRAs touch the same layers. The runs are interleaved, in alternating order, `--repeats` times after one warm-up
each; the table gives medians and the ratio of the entity LoRAs to the global one (the target is at most 1.15).

Table 2 times one Linear of the first dual block (`attn.to_q` on the image tokens) and of the first single block
(`attn.to_q` on the joint text and image tokens), both CFG branches as one batch, with the 3 entity LoRAs applied two
ways: gather/scatter (per file, the rows of its tokens gathered, their low-rank product computed and added back with
`index_add_`: what the pipeline runs, `pipeline/entity_lora.py`) and a per-token mask on the low-rank output of all
tokens, all files stacked in one pair of matmuls.

Configs (random weights, nothing downloaded): medium, 1 + 2 blocks of width 1024 (the CPU benchmark config of
`benchmarks/regional_attention.py`); full, FLUX.1-dev's architecture in bf16 (a CUDA GPU with about 40 GB).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regional_attention import build_pipeline, layout, timed

from eligen.pipeline.entity_lora import LoraTokens, active_tokens, batched_tokens, token_stream
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import Layout, LoraSpec
from eligen.pipeline.train.lora import block_linears

K = 3  # entities, each with its own LoRA


def lora_file(transformer: torch.nn.Module, rank: int, seed: int, path: Path) -> str:
    """A diffusers/peft-style LoRA of random factors on every per-token Linear of the blocks."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in block_linears(transformer):
        if token_stream(name) is None:
            continue
        linear = transformer.get_submodule(name)
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=generator) \
            / linear.in_features
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=generator) \
            * 0.01
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


Run = tuple[Callable[[], object], Callable[[], object]]  # (untimed set-up, timed call)


def interleaved(runs: dict[str, Run], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each run's timed call after one warm-up each, interleaved in alternating order, each call
    after its own set-up."""
    for setup, run in runs.values():
        setup()
        timed(run, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name][0]()
            times[name].append(timed(runs[name][1], device))
    return {name: statistics.median(values) for name, values in times.items()}


def sampling_runs(pipe: EligenPipeline, side: int, steps: int, files: list[str]) -> dict[str, Run]:
    """Sampling runs, each prepared before it is timed (the LoRAs swapped in): no LoRA, the first file as a
    global LoRA, one file per entity."""
    plain = layout(side, K, steps=steps)
    global_ = plain.model_copy(update={"loras": [LoraSpec(path=files[0])]})

    def run(spec: Layout) -> Run:
        prepared: list[object] = []

        def setup() -> None:
            prepared[:] = pipe.prepare(spec)

        return setup, lambda: pipe.sample(spec, *prepared, 0)

    return {"no LoRA": run(plain), "1 global LoRA": run(global_), f"{K} entity LoRAs": run(entity_layout(plain, files))}


def entity_layout(spec: Layout, files: list[str]) -> Layout:
    """`spec` with file i as entity i's LoRA."""
    entities = [e.model_copy(update={"loras": [LoraSpec(path=f)]}) for e, f in zip(spec.entities, files, strict=True)]
    return spec.model_copy(update={"entities": entities})


def masked_stacked(module: torch.nn.Linear, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                   coefficients: torch.Tensor) -> torch.Tensor:
    """The alternative to the pipeline's gathering: the Linear plus ``B ((A x) * c)`` for every token, all files'
    factors stacked (R = the sum of their ranks) and ``c`` (B, S, R) each token's weight of each rank row, 0 for
    tokens of no entity; B and the addition as one `addmm` (the precision of the pipeline's hook)."""
    out = module(x)  # no token weights active: the base output
    low = (F.linear(x, down).float() * coefficients).to(out.dtype)
    return torch.addmm(out.reshape(-1, out.shape[-1]), low.flatten(0, -2), up.T).view_as(out)


def linear_rows(pipe: EligenPipeline, side: int, files: list[str], rank: int, repeats: int) -> list[str]:
    """Table 2 rows for one rank: gather/scatter (the pipeline's hook) against the masked stacked product on a dual
    block's image Linear and a single block's joint one."""
    positive, negative = pipe.prepare(entity_layout(layout(side, K, steps=2), files))
    tokens = batched_tokens([positive.lora_tokens, negative.lora_tokens], positive.prompt_embeds.shape[1])
    return [linear_row(pipe, name, tokens, files, rank, repeats)
            for name in ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_q")]


def linear_row(pipe: EligenPipeline, name: str, tokens: LoraTokens, files: list[str], rank: int, repeats: int
               ) -> str:
    module = pipe.transformer.get_submodule(name)
    weights = {"image": tokens.image, "text": tokens.text,
               "joint": torch.cat([tokens.text, tokens.image], dim=1)}[token_stream(name)]
    x = torch.randn(*weights.shape[:2], module.in_features, generator=torch.Generator().manual_seed(0)).to(
        pipe.device, pipe.dtype)
    deltas = [next(d for d in pipe.family.load_lora(path) if d.module == name) for path in files]
    down = torch.cat([d.down for d in deltas]).to(pipe.device, pipe.dtype)
    up = torch.cat([d.up for d in deltas], dim=1).to(pipe.device, pipe.dtype)
    coefficients = torch.cat([weights[..., [f]].expand(-1, -1, d.down.shape[0]) * d.scale
                              for f, d in enumerate(deltas)], dim=-1)

    def gathered() -> object:
        with active_tokens(tokens):
            return module(x)

    def nothing() -> None:
        pass

    times = interleaved({"gather": (nothing, gathered),
                         "mask": (nothing, lambda: masked_stacked(module, x, down, up, coefficients))}, repeats,
                        pipe.device)
    share = float((weights != 0).float().mean())
    return (f"| {name} | {rank} | {weights.shape[1]} x 2 | {share:.0%} | {times['gather'] * 1e3:.2f} | "
            f"{times['mask'] * 1e3:.2f} | {times['mask'] / times['gather']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["medium", "full"], default="medium")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.config == "full" else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    with tempfile.TemporaryDirectory() as folder:
        pipe = build_pipeline(args.config, Path(folder), device, dtype)
        sampling = ["| rank | no LoRA s | 1 global LoRA s | 3 entity LoRAs s | entity / global | entity / none |",
                    "|---|---|---|---|---|---|"]
        linear = ["| Linear | rank | tokens | tokens per file | gather/scatter ms (the pipeline's) | "
                  "mask + stacked ms | mask / gather |", "|---|---|---|---|---|---|---|"]
        for rank in args.ranks:
            files = [lora_file(pipe.transformer, rank, seed, Path(folder) / f"r{rank}-{seed}.safetensors")
                     for seed in range(K)]
            times = interleaved(sampling_runs(pipe, args.size, args.steps, files), args.repeats, pipe.device)
            none, one, three = times["no LoRA"], times["1 global LoRA"], times[f"{K} entity LoRAs"]
            sampling.append(f"| {rank} | {none:.2f} | {one:.2f} | {three:.2f} | {three / one:.3f} | "
                            f"{three / none:.3f} |")
            linear += linear_rows(pipe, args.size, files, rank, args.repeats * 4)
    threads = torch.get_num_threads() if device == "cpu" else "-"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"entity LoRAs: config {args.config} ({name}, {args.dtype}, {threads} thread(s)), {args.size}x{args.size}, "
          f"k = {K}, {args.steps} steps of true CFG, medians of {args.repeats} interleaved runs\n")
    print("\n".join(sampling))
    print(f"\none Linear with its 3 entity LoRAs on both CFG branches' tokens, medians of {args.repeats * 4} runs\n")
    print("\n".join(linear))


if __name__ == "__main__":
    main()

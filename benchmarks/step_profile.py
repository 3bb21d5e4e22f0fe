"""Where one sampling step's time goes with the default settings: the torch profiler's top operators.

    python benchmarks/step_profile.py [--config tiny|medium] [--size 512] [--entities 5] [--steps 2] [--rows 15]

Runs `EligenPipeline.sample` (true CFG: two transformer passes per step; `attention: auto`, the reference's 512-token
entity prompts) once to warm up, then profiles a second run and prints the operators by their own CPU time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regional_attention import build_pipeline, layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", "medium"], default="medium")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--entities", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.config == "tiny" else torch.bfloat16
    with tempfile.TemporaryDirectory() as folder:
        pipe = build_pipeline(args.config, Path(folder), "cpu", dtype)
        spec = layout(args.size, args.entities, steps=args.steps)
        positive, negative = pipe.prepare(spec)
        pipe.sample(spec, positive, negative, 0)
        with profile(activities=[ProfilerActivity.CPU]) as run:
            pipe.sample(spec, positive, negative, 0)
    print(f"config {args.config}, {args.size}x{args.size}, k = {args.entities}, {args.steps} steps of true CFG, "
          f"attention {spec.attention}, {args.threads} thread(s)\n")
    print(run.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

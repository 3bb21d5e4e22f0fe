"""Training throughput (samples/s) of `eligen train` for a tiny and a medium model, with and without `--cache`.

    python benchmarks/train_throughput.py [--steps 20] [--threads 1] [--device cpu]

Builds both models offline (random weights) and a synthetic dataset of coloured rectangles, trains each
configuration in this process and prints a Markdown table. The first steps are warm-up and are not timed; the
cache is built before timing starts (its one-off cost is printed separately).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

from eligen.pipeline.shapes.tiny_flux import build_tiny_flux
from eligen.pipeline.train.config import TrainConfig
from eligen.pipeline.train.example import write_example_dataset
from eligen.pipeline.train.loop import StepReport, Trainer

WARMUP = 3


@dataclass(frozen=True)
class Setting:
    name: str
    transformer: dict[str, object] | None  # FluxTransformer2DModel arguments replacing the tiny one
    image: int  # side of the square training images (px)


SETTINGS = [
    Setting("tiny (2+2 blocks, width 32, 64x64 px, 16 image tokens)", None, 64),
    Setting("medium (4+8 blocks, width 256, 256x256 px, 256 image tokens)",
            {"num_layers": 4, "num_single_layers": 8, "attention_head_dim": 64, "num_attention_heads": 4,
             "axes_dims_rope": (16, 24, 24)}, 256),
]


class _Clock:
    """Records when training started and when each optimizer step ended."""

    def __init__(self) -> None:
        self.started = 0.0
        self.times: list[float] = []

    def start(self, total: int, done: int) -> None:
        self.started = time.perf_counter()

    def step(self, report: StepReport) -> None:
        self.times.append(time.perf_counter())

    def note(self, message: str) -> None:
        pass


def _model(folder: Path, setting: Setting) -> Path:
    from diffusers import FluxTransformer2DModel

    path = build_tiny_flux(folder / "model", seed=0)
    if setting.transformer is not None:
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, joint_attention_dim=32,
                                             pooled_projection_dim=32, guidance_embeds=True, **setting.transformer)
        transformer.save_pretrained(path / "transformer")
    return path


def measure(setting: Setting, cache: bool, steps: int, device: str, folder: Path) -> tuple[float, float]:
    """(samples/s after warm-up, seconds before the first step: loading the model, and caching when asked)."""
    model = _model(folder, setting) if not (folder / "model").exists() else folder / "model"
    data = folder / "data"
    if not data.exists():
        write_example_dataset(data, 16, (setting.image, setting.image))
    config = TrainConfig(data=data, output=folder / f"run-{cache}", model=str(model), steps=steps + WARMUP,
                         rank=16, batch_size=2, resolution=setting.image, bucket_step=16, cache=cache,
                         save_every=0, num_workers=0, device=device)
    clock = _Clock()
    started = time.perf_counter()
    trainer = Trainer(config, clock)
    trainer.run()
    setup = clock.started - started
    timed = clock.times[-1] - clock.times[WARMUP - 1]
    return steps * config.batch_size / timed, setup


def cpu_name() -> str:
    """The CPU model (Linux), else what the platform module knows."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for setting in SETTINGS:
        with tempfile.TemporaryDirectory() as folder:
            for cache in (False, True):
                rate, setup = measure(setting, cache, args.steps, args.device, Path(folder))
                rows.append(f"| {setting.name} | {'yes' if cache else 'no'} | {rate:.2f} | {setup:.1f} |")
    print(f"{date.today()}, {cpu_name()} ({os.cpu_count()} cores), {args.device}, torch "
          f"{torch.__version__}, {args.threads} thread(s), batch 2, LoRA rank 16, gradient checkpointing on, "
          f"{args.steps} timed steps after {WARMUP} warm-up steps\n")
    print("| model | --cache | samples/s | s before the first step |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

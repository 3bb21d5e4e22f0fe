"""Checkpoints of a training run, written atomically and read back without unpickling anything but tensors.

    OUTPUT/checkpoints/step-000500/
        lora.safetensors         the LoRA so far (the same file as the final one; usable with --lora)
        transformer.safetensors  instead, with --full: every trained parameter by name
        optimizer.pt             AdamW state (tensors and numbers; read with torch.load(weights_only=True))
        scheduler.json           learning-rate scheduler state
        rng-<process>.safetensors  each process's torch (and CUDA) RNG states
        state.json               step, data position (epoch, batch), the run's settings

A checkpoint is assembled in `checkpoints/.step-000500.tmp/` and renamed into place when complete, so a folder
named `step-*` is always whole; `latest` means the highest such step.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
STATE = "state.json"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message says why."""


@dataclass(frozen=True)
class Position:
    """How far a run is: optimizer steps done, and the global batches of the current epoch already consumed."""

    step: int
    epoch: int
    batch: int


def final_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS / f"step-{step:06d}"


def staging_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS / f".step-{step:06d}.tmp"


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = out_dir / CHECKPOINTS
    found = [p for p in folder.iterdir() if _STEP_DIR.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def find_checkpoint(out_dir: Path, resume: str) -> Path:
    """The checkpoint named by `--resume`: a folder, or `latest` in the output folder."""
    if resume == "latest":
        found = checkpoints(out_dir)
        if not found:
            raise CheckpointError(f"--resume latest: {out_dir / CHECKPOINTS} holds no checkpoint")
        return found[-1]
    path = Path(resume)
    if not (path / STATE).is_file():
        raise CheckpointError(f"--resume {resume}: expected a checkpoint folder with {STATE}")
    return path


def write_state(folder: Path, position: Position, run: dict[str, Any]) -> None:
    (folder / STATE).write_text(json.dumps({**asdict(position), "run": run}, indent=2) + "\n", encoding="utf-8")


def read_state(folder: Path) -> tuple[Position, dict[str, Any]]:
    state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    return Position(state["step"], state["epoch"], state["batch"]), state["run"]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def save_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))


def save_scheduler(folder: Path, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    (folder / "scheduler.json").write_text(json.dumps(scheduler.state_dict()) + "\n", encoding="utf-8")


def load_scheduler(folder: Path, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text(encoding="utf-8")))


def save_rng(folder: Path, process: int) -> None:
    """This process's torch RNG states (CPU and every CUDA device)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(states, str(folder / f"rng-{process}.safetensors"))


def load_rng(folder: Path, process: int) -> None:
    """Restore this process's RNG states (a process the checkpoint did not have keeps its own)."""
    path = folder / f"rng-{process}.safetensors"
    if not path.is_file():
        return
    states = load_file(path)
    torch.set_rng_state(states["cpu"])
    cuda = [states[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in states]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


def commit(out_dir: Path, step: int) -> Path:
    """Rename a complete staging folder into place (replacing a checkpoint of the same step)."""
    final = final_dir(out_dir, step)
    if final.exists():
        shutil.rmtree(final)
    staging_dir(out_dir, step).rename(final)
    return final


def prune(out_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (0 keeps all)."""
    if keep:
        for old in checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)

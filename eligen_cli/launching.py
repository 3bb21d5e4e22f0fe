"""Running a command in several processes through accelerate's launcher (torchrun underneath): `eligen train`
and `eligen eval` with `--num-processes`."""

from __future__ import annotations

import os
import socket

from .common import fail

LAUNCHED = ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND")  # set in processes that accelerate's launcher started


def launched() -> bool:
    """Whether this process was started by accelerate's launcher."""
    return any(k in os.environ for k in LAUNCHED)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def launcher_arguments(num_processes: int, mixed_precision: str) -> list[str]:
    """accelerate launch's options for `num_processes` processes on this machine (gloo on CPUs)."""
    arguments = ["--num_processes", str(num_processes), "--num_machines", "1", "--dynamo_backend", "no",
                 "--main_process_port", str(free_port()), "--mixed_precision", mixed_precision]
    return [*arguments, "--multi_gpu"] if num_processes > 1 else arguments


def run_launcher(arguments: list[str], command: list[str], what: str) -> None:
    """`accelerate launch ARGUMENTS -m eligen COMMAND...`; a failed process becomes one error line."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args([*arguments, "-m", "eligen", *command])
    try:
        launch_command(args)
    except Exception as exc:  # a failed worker: its own error is already on stderr
        raise fail(f"{what} process failed ({type(exc).__name__}); see its error above", 1) from None


def launch_self(command: str, args: list[str], num_processes: int, device: str | None) -> None:
    """Run `eligen COMMAND ARGS` in `num_processes` processes."""
    if device == "cpu" or not cuda_available():
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # gloo on CPUs, even on a machine with a GPU
    run_launcher(launcher_arguments(num_processes, "no"), [command, *args], f"an {command}")

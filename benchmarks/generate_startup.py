"""Whole-process time of `eligen generate layouts/shapes.yaml` (imports, loading, sampling, writing), two installs
compared in paired runs.

    python benchmarks/generate_startup.py --a /path/to/old/venv/bin/eligen --b .venv/bin/eligen [--runs 7]
    python benchmarks/generate_startup.py --a OLD --b NEW --model pipeline/shapes/builtin-models/shapes
    python benchmarks/generate_startup.py --a OLD --b NEW --without scipy --without torchvision --without torchao
    python benchmarks/generate_startup.py --a .venv/bin/eligen --b .venv/bin/eligen --a-layout OLD/shapes.yaml \
        --a-model OLD/shapes                 # one install, an older layout and model folder as A

Runs the two `eligen` executables in turn (A B A B ..., one warm-up each first, not counted), each a fresh process
writing to a temporary folder, and prints a Markdown table: wall and CPU seconds (user + sys, of the process and its
children, from the kernel's accounting: `os.wait4`) and peak resident memory, each as min / median / max, and the
ratio B/A of each pair, so that a machine whose speed drifts during the runs still compares fairly. `--model` gives
both the same model (an older install's built-in `shapes` may be another model, of another size).
`--a-layout` and `--a-model` give A another layout file and model (an older `layouts/shapes.yaml` and built-in folder,
say), so one install compares two versions of the README's command.
`--without PACKAGE` runs both as if PACKAGE were not installed (the command line started by the executable's own
`python`, with `sys.modules[PACKAGE] = None` first, which is how an importer sees a missing package): diffusers and
transformers import some optional packages only because they are there. The load average before and after is
printed with the table: on a busy machine the absolute times are pessimistic, the ratios less so.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from eligen.pipeline.model_info import default_size

LAYOUT = Path(__file__).resolve().parent.parent / "layouts" / "shapes.yaml"
# The command line with the packages named in argv[1] (comma-separated) hidden; the rest of argv its arguments
WITHOUT = ("import sys; sys.modules.update(dict.fromkeys(filter(None, sys.argv[1].split(','))));"
           "sys.argv = ['eligen', *sys.argv[2:]]; from eligen.main import app; app()")


@dataclass(frozen=True)
class Run:
    wall: float  # s
    cpu: float  # s, user + sys
    peak: float  # MiB, the largest resident set of the process


def run_once(command: list[str]) -> Run:
    """One whole process, timed by the kernel's accounting of it (and its children)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)  # reaped here, with its resource usage
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # what Popen.wait would have set
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{errors.decode(errors='replace')}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def spread(values: list[float], digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="the first eligen executable (the baseline)")
    parser.add_argument("--b", required=True, help="the second eligen executable")
    parser.add_argument("--runs", type=int, default=7, help="counted runs of each (default 7)")
    parser.add_argument("--model", help="the model to render with (default: the layout's, the built-in shapes)")
    parser.add_argument("--a-layout", type=Path, default=LAYOUT, help="the layout A renders (default: B's, "
                        "layouts/shapes.yaml)")
    parser.add_argument("--a-model", help="the model A renders with (default: --model)")
    parser.add_argument("--without", action="append", default=[], metavar="PACKAGE",
                        help="run both as if PACKAGE were not installed; repeat for more")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = yaml.safe_load(LAYOUT.read_text(encoding="utf-8")).get("size") or default_size(args.model or "shapes")
        commands = {}
        for name, exe, layout, model in (("A", args.a, args.a_layout, args.a_model or args.model),
                                         ("B", args.b, LAYOUT, args.model)):
            start = [str(Path(exe).with_name("python")), "-c", WITHOUT, ",".join(args.without)] if args.without \
                else [exe]
            extra = ["--model", model] if model else []
            commands[name] = [*start, "generate", str(layout), "-o", str(folder / f"{name}.png"), "--overwrite", *extra]
        before = load_average()
        for command in commands.values():
            run_once(command)  # warm-up: file caches
        runs: dict[str, list[Run]] = {"A": [], "B": []}
        for _ in range(args.runs):
            for name, command in commands.items():
                runs[name].append(run_once(command))
        after = load_average()

    print(f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; load average (1, 5, 15 min) {before} before, {after} after")
    print(f"`eligen generate` of layouts/shapes.yaml at {size[0]}x{size[1]}"
          f"{' with --model ' + args.model if args.model else ''}"
          f"{', without ' + ', '.join(args.without) if args.without else ''}, {args.runs} paired runs after one "
          "warm-up each")
    a_renders = "" if args.a_layout == LAYOUT and not args.a_model else \
        f" rendering {args.a_layout}{' with --model ' + args.a_model if args.a_model else ''}"
    print(f"A = {args.a}{a_renders}\nB = {args.b}\n")
    print("| | wall s (min / median / max) | CPU s | peak MiB |")
    print("|---|---|---|---|")
    for name in runs:
        r = runs[name]
        print(f"| {name} | {spread([x.wall for x in r])} | {spread([x.cpu for x in r])} | "
              f"{spread([x.peak for x in r], 0)} |")
    pairs = list(zip(runs["A"], runs["B"], strict=True))
    print(f"| B/A, pair by pair | {spread([b.wall / a.wall for a, b in pairs])} | "
          f"{spread([b.cpu / a.cpu for a, b in pairs])} | {spread([b.peak / a.peak for a, b in pairs])} |")


if __name__ == "__main__":
    main()

"""What `eligen generate` imports, and how it leaves Python's garbage collector (its start-up time,
docs/performance.md). Each case runs in a fresh interpreter: the modules it imports and the collector's state are
per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES_LAYOUT = REPO / "layouts" / "shapes.yaml"

# Runs the command line in this interpreter (argv: the commands, as JSON), then prints what it imported, the
# collector's state and how many of the transformers that ran are still alive after a collection.
PROBE = """
import gc, json, sys, weakref
import torch

ran = weakref.WeakSet()
torch.nn.modules.module.register_module_forward_pre_hook(
    lambda module, args: ran.add(module) if type(module).__name__.endswith("Transformer2DModel") else None)
from eligen.main import app

for command in json.loads(sys.argv[1]):
    app(command, prog_name="eligen", standalone_mode=False)
gc.collect()
print(json.dumps({"modules": sorted(sys.modules), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count(),
                  "alive": len(ran)}))
"""

# Modules of features `eligen generate layouts/shapes.yaml` does not use (attention maps, IP-Adapters, training,
# evaluation, the studio's server, the agent's clients): none of them is imported.
UNUSED = ["eligen.pipeline.attention_maps", "eligen.pipeline.families.flux.ip_adapter",
          "eligen.pipeline.families.flux.single_file", "eligen.pipeline.train.loop", "eligen.pipeline.train.lora",
          "eligen.pipeline.bench.run", "eligen.studio.engine", "eligen.agent.local_backend", "uvicorn", "openai"]


def _probe(commands: list[list[str]], cwd: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True,
                         cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False, timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_generate_imports_only_what_it_uses_and_leaves_models_collectable(tmp_path: Path) -> None:
    commands = [["generate", str(SHAPES_LAYOUT), "-o", str(tmp_path / f"out-{i}.png")] for i in range(2)]
    found = _probe(commands, tmp_path)
    assert (tmp_path / "out-0.png").is_file() and (tmp_path / "out-1.png").is_file()
    assert [m for m in UNUSED if m in found["modules"]] == []
    # The imports were frozen out of the collector's walks, and the collector is on again afterwards ...
    assert found["frozen"] > 0 and found["enabled"]
    # ... but nothing a command loaded was frozen with them: both models ran, and both are gone after a collection
    # (a loaded pipeline has reference cycles, so only the collector frees it)
    assert found["alive"] == 0


def test_a_dry_run_imports_neither_diffusers_nor_transformers(tmp_path: Path) -> None:
    found = _probe([["generate", str(SHAPES_LAYOUT), "--dry-run", "-o", str(tmp_path / "out.png")]], tmp_path)
    assert (tmp_path / "out.preview.png").is_file() and not (tmp_path / "out.png").exists()
    assert [m for m in ("diffusers", "transformers", "peft") if m in found["modules"]] == []

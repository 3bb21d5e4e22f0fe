"""The MLLM commands are registered, and their help loads neither torch nor the openai client."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from eligen.main import app


def test_agent_commands_are_registered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("plan", "chat", "annotate"))


def test_agent_help_is_light() -> None:
    script = (
        "import sys\nimport typer\nfrom typer.testing import CliRunner\n"
        "from eligen.agent_commands import register\n"
        "app = typer.Typer()\nregister(app)\n"
        "for name in ('plan', 'chat', 'annotate'):\n"
        "    r = CliRunner().invoke(app, [name, '--help'])\n"
        "    assert r.exit_code == 0 and '--mllm-url' in r.output, r.output\n"
        "heavy = [m for m in ('torch', 'openai', 'transformers', 'qwen_vl_utils') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)

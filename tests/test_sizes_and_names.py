"""Sizes a model cannot run, and model names that are nothing: exit 2 before anything is loaded or written."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline import memory_estimate
from eligen.pipeline.layout import LayoutError, parse_layout
from eligen.pipeline.memory_estimate import check_memory, estimate_memory
from eligen.pipeline.model_info import default_size

runner = CliRunner()
GIB = 1024**3


def _layout(size: int, entities: int = 1, **extra: object):
    boxes = [{"prompt": "a red circle", "box": [0, 0, size // 2, size // 2]} for _ in range(entities)]
    return parse_layout({"prompt": "a red circle", "model": "shapes", "size": [size, size], "entities": boxes,
                         **extra})


def test_the_estimate_counts_tokens_from_the_model_config() -> None:
    """The shapes model: VAE factor 4 (three blocks), 2 x 2 packing, 16 text tokens a prompt group (eligen.json)."""
    small, big = estimate_memory(_layout(64)), estimate_memory(_layout(4096))
    assert (small.image_tokens, small.text_tokens) == ((64 // 8) ** 2, 2 * 16)
    assert big.image_tokens == 512**2 and big.form == "split"
    tokens = big.text_tokens + big.image_tokens
    assert big.attention == 2 * tokens**2  # the bool mask of allowed pairs and its parts: 2 bytes a pair
    # the dense form adds the additive float32 mask and a float32 score per head (4 heads) and pair
    dense = estimate_memory(_layout(4096, attention="dense"))
    assert dense.attention == 2 * tokens**2 + tokens**2 * (4 + 4 * 4)
    # each entity adds one prompt group of text tokens; no entity, no regional mask
    assert estimate_memory(_layout(64, 3)).text_tokens == 4 * 16
    assert estimate_memory(_layout(4096, 0)).attention == 0


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_size_that_cannot_fit_is_refused_before_loading(command: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The shapes model at 4096x4096 (a 64 GiB mask) on a machine with 16 GiB free: exit 2 naming the estimate,
    what is free and what to change; nothing written."""
    monkeypatch.setattr(memory_estimate, "_system_available", lambda: 16 * GIB)
    monkeypatch.chdir(tmp_path)
    Path("big.yaml").write_text("prompt: a red circle\nsize: [4096, 4096]\nentities:\n"
                                "  - prompt: a red circle\n    box: [0, 0, 2048, 2048]\n")
    args = ["generate", "big.yaml", "--model", "shapes", "--device", "cpu", "-o", "out.png"] if command == "generate" \
        else ["eval", "big.yaml", "--model", "shapes", "--device", "cpu", "-o", "out"]
    result = runner.invoke(app, args)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "error: big.yaml: size: expected a generation that fits in memory: 4096x4096 with 1 entity needs " \
           "about 133 GiB" in message
    width, height = default_size("shapes")  # what the shapes model's eligen.json declares
    assert "this machine has 16 GiB available" in message and f"the model's own is {width}x{height}" in message
    assert f"warning: big.yaml: size: 4096x4096 is far from the {width}x{height} the model declares: " \
           f"{4096 * 4096 // (width * height)}x its pixels" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml"]


@pytest.mark.filterwarnings("ignore:.*is far from")
def test_a_dry_run_warns_instead_and_a_fitting_size_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_estimate, "_system_available", lambda: 16 * GIB)
    with pytest.warns(UserWarning, match="fits in memory"):
        check_memory(_layout(4096), "cpu", "big.yaml", refuse=False)
    with pytest.raises(LayoutError, match=r"big\.yaml: size: expected a generation that fits"):
        check_memory(_layout(4096), "cpu", "big.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_memory(_layout(default_size("shapes")[0]), "cpu").total < GIB  # the model's own size: no warning


def test_inpaint_and_transfer_check_the_size_too(tiny_model: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An image whose model-sized canvas cannot fit (here: 64 MiB free) is refused the same way before loading."""
    monkeypatch.setattr(memory_estimate, "_system_available", lambda: 64 * 1024**2)
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (2048, 2048), "white").save("photo.png")
    Image.new("RGB", (512, 512), "white").save("logo.png")
    Path("edits.yaml").write_text("prompt: a red circle\nmodel: shapes\nentities:\n"
                                  "  - prompt: a red circle\n    box: [0, 0, 512, 512]\n")
    Path("tote.yaml").write_text(f"model: {tiny_model}\ntarget: photo.png\nprompt: a tote\nentities:\n"
                                 "  - prompt: a logo\n    box: [0, 0, 512, 512]\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (["inpaint", "photo.png", "edits.yaml"], ["transfer", "logo.png", "tote.yaml"]):
        result = runner.invoke(app, [*args, "--device", "cpu", "-o", "out.png"])
        assert result.exit_code == 2 and "expected a generation that fits in memory" in result.output, result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_model_folder_missing_names_the_option_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("prompt: a red circle\n")
    result = runner.invoke(app, ["generate", str(tmp_path / "a.yaml"), "--model", "/no/such/folder", "--dry-run"])
    assert result.exit_code == 2 and "error: --model: expected a model folder" in result.output, result.output
    assert "--model: --model" not in result.output


def test_a_bare_name_that_is_nothing_answers_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`my-flux` (not a folder, not built in, not cached): the hub is asked once, with a short timeout, and the
    message names what the name is not and the closest local name."""
    import huggingface_hub
    import huggingface_hub.constants

    calls: list[tuple[str, float | None]] = []

    def unreachable(self: object, repo_id: str, timeout: float | None = None, **_: object) -> None:
        calls.append((repo_id, timeout))
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-fluxx").mkdir()
    Path("a.yaml").write_text("prompt: a red circle\nmodel: my-flux\n")
    result = runner.invoke(app, ["generate", "a.yaml", "--dry-run"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "error: a.yaml: model: expected a model folder, a built-in model or a hub id; 'my-flux' is not a folder" \
        in message and "the hub could not be reached (ConnectionError)" in message
    assert "did you mean 'my-fluxx'?" in message and calls == [("my-flux", 5.0)]
    result = runner.invoke(app, ["generate", "a.yaml", "--dry-run", "--model", "shape"])
    assert result.exit_code == 2 and "did you mean 'shapes'?" in result.output, result.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: not even one request
    result = runner.invoke(app, ["generate", "a.yaml", "--dry-run"])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE is set" in result.output and len(calls) == 2

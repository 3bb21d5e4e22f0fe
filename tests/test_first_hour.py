"""The first hour as a new user (issue 15): each trap found, kept fixed. Mostly on the built-in shapes model,
through the real command line; what must not import torch runs in a fresh interpreter."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.layout_warnings import LayoutWarning
from eligen.pipeline.model_info import default_size
from eligen.pipeline.outputs import read_png_metadata
from eligen.terminal import PLAIN_PERIOD_S, library_output

REPO = Path(__file__).resolve().parent.parent
SHAPES_LAYOUT = REPO / "layouts" / "shapes.yaml"
runner = CliRunner()


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _shapes_layout(folder: Path, prompt: str, entities: list[tuple[str, list[int]]], **extra: object) -> Path:
    data = {"model": "shapes", "seed": 0, "prompt": prompt, **extra,
            "entities": [{"prompt": p, "box": box} for p, box in entities]}
    return _write(folder / "scene.yaml", data)


# 1. Words a model does not know, and prompts longer than it reads, are said, not passed silently.

def test_unknown_words_are_listed_in_preview(tmp_path: Path) -> None:
    layout = _shapes_layout(tmp_path, "a red circle and an orange triangle",
                            [("a red circle", [4, 4, 26, 26]), ("a pink hexagon", [36, 4, 60, 28])])
    result = runner.invoke(app, ["preview", str(layout), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    out = _squeeze(result.output)
    assert f"warning: {layout}: prompt: 1 word the model shapes does not know: 'an'" in out
    assert f"warning: {layout}: entities[1].prompt: 2 words the model shapes does not know: 'pink', 'hexagon'" in out
    assert "entities[0].prompt" not in out  # every word of "a red circle" is known
    assert "it knows: a and red green blue yellow purple orange black circle square triangle" in out


def test_the_readme_layout_draws_no_warning(tmp_path: Path) -> None:
    result = runner.invoke(app, ["preview", str(SHAPES_LAYOUT), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_a_truncated_prompt_group_is_named_with_the_tokens_dropped(tiny_pipe, tmp_path: Path) -> None:
    from eligen.pipeline.layout import parse_layout

    long = " ".join(["cat"] * 40)  # 40 words of the tiny vocabulary, one T5 token each, + the end token
    assert len(tiny_pipe.family.pipe.tokenizer_2(long).input_ids) == 41
    layout = parse_layout({"size": [64, 64], "steps": 1, "prompt": "a cat",
                           "entities": [{"prompt": "a dog", "box": [0, 0, 32, 32]},
                                        {"prompt": long, "box": [32, 0, 64, 32]}]})
    with pytest.warns(LayoutWarning) as caught:
        tiny_pipe.prepare(layout, source="scene.yaml")
    messages = [str(w.message) for w in caught if issubclass(w.category, LayoutWarning)]
    # the tiny model reads 32 T5 tokens per prompt group: 41 - 32 = 9 are dropped, from entities[1] only
    assert messages == ["scene.yaml: entities[1].prompt: 41 T5 tokens, the model reads 32: the last 9 tokens are "
                        "dropped\n  hint: shorten the prompt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        tiny_pipe.prepare(layout.model_copy(update={"entities": layout.entities[:1]}))  # nothing cut: no warning


def test_generate_warns_of_the_cut_global_prompt_on_the_shapes_model(tmp_path: Path) -> None:
    layout = _shapes_layout(tmp_path, "a red circle and a pink hexagon", [("a red circle", [4, 4, 30, 30])],
                            steps=2)
    result = runner.invoke(app, ["generate", str(layout), "-o", str(tmp_path / "out.png"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = _squeeze(result.output)
    assert "prompt: 2 words the model shapes does not know: 'pink', 'hexagon'" in out
    # "pink" and "hexagon" are spelt in characters: 17 T5 tokens with the end token, the shapes model reads 16
    assert f"warning: {layout}: prompt: 17 T5 tokens, the model reads 16: the last token is dropped" in out


# 2. Quiet by default; progress where the output is not a terminal.

def test_a_piped_run_is_quiet_and_prints_progress_lines(tmp_path: Path) -> None:
    out = tmp_path / "shapes.png"
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "TORCH_LOGS", "TRANSFORMERS_VERBOSITY",
                                                            "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    run = subprocess.run([sys.executable, "-m", "eligen", "generate", str(SHAPES_LAYOUT), "-o", str(out),
                          "--device", "cpu"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    shapes_layout = yaml.safe_load(SHAPES_LAYOUT.read_text())
    seed, steps = shapes_layout["seed"], shapes_layout["steps"]
    assert lines[0] == "loading shapes"
    first = f"shapes.yaml seed {seed}: step 1/{steps}, "
    assert any(line.startswith(first) and " it/s, ETA " in line for line in lines), lines
    width, height = default_size("shapes")  # the layout has no size: the model's own
    assert lines[-1].startswith(f"wrote {out} ({width}x{height}, {steps} steps, ")
    for noise in ("Loading pipeline components", "Loading weights", "it/s]", "torch/utils", "torchao"):
        assert noise not in run.stderr, run.stderr
    # loading, progress at step 1 and then at most every PLAIN_PERIOD_S of the run (however slow the machine:
    # the run's own time is in the last line), wrote; nothing else
    seconds = float(lines[-1].rsplit(", ", 1)[1].removesuffix(" s)"))
    progress = lines[1:-1]
    assert all(line.startswith(f"shapes.yaml seed {seed}: step ") for line in progress), lines
    assert 1 <= len(progress) <= 2 + seconds // PLAIN_PERIOD_S, lines


def test_library_warnings_are_hidden_unless_verbose() -> None:
    def shown(verbose: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            with library_output(verbose):
                warnings.warn("a library's noise", DeprecationWarning, stacklevel=1)
                assert (os.environ.get("TQDM_DISABLE") == "1") is not verbose
        return [str(w.message) for w in caught]

    saved = os.environ.pop("TQDM_DISABLE", None)
    try:
        assert shown(verbose=False) == []
        assert shown(verbose=True) == ["a library's noise"]
        assert "TQDM_DISABLE" not in os.environ  # the environment is restored
    finally:
        if saved is not None:
            os.environ["TQDM_DISABLE"] = saved


# 3. `eligen data shapes --layouts` writes layouts for the model the scenes are for.

def test_data_shapes_layouts_render_on_the_shapes_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    made = runner.invoke(app, ["data", "shapes", "-o", "d", "--n", "2", "--seed", "3", "--layouts", "L"])
    assert made.exit_code == 0, made.output
    layout = tmp_path / "L" / "00000.yaml"
    assert yaml.safe_load(layout.read_text())["model"] == "shapes"
    result = runner.invoke(app, ["generate", str(layout), "-o", "out.png", "--steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert read_png_metadata(tmp_path / "out.png")["model"] == "shapes"
    assert Image.open(tmp_path / "out.png").size == default_size("shapes")  # --size defaults to the model's world


# 4. An output path that is a folder is refused before any model is loaded, --overwrite or not.

@pytest.mark.parametrize("name", ["out", "results.png"])  # a folder's name may end in .png too
@pytest.mark.parametrize("command", ["generate", "preview"])
def test_an_existing_folder_is_never_an_output_file(tmp_path: Path, command: str, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    result = runner.invoke(app, [command, str(SHAPES_LAYOUT), "-o", str(folder), "--overwrite"])
    assert result.exit_code == 1, result.output
    assert f"error: {folder} is a folder; name an output file, e.g. {folder / 'image.png'}" in _squeeze(result.output)
    assert "loading" not in result.output and "Traceback" not in result.output
    assert list(folder.iterdir()) == []


def test_an_output_under_a_file_is_refused_before_loading(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("precious")
    result = runner.invoke(app, ["generate", str(SHAPES_LAYOUT), "-o", str(tmp_path / "notes" / "x.png")])
    assert result.exit_code == 1 and "is a file, not a folder" in result.output, result.output
    assert "loading" not in result.output and (tmp_path / "notes").read_text() == "precious"


# 5. Only .png names: eligen writes PNG with the layout embedded.

@pytest.mark.parametrize("name", ["out.jpg", "out.JPEG", "out"])
def test_an_output_name_not_ending_in_png_is_refused(tmp_path: Path, name: str) -> None:
    for args in (["generate", str(SHAPES_LAYOUT)], ["preview", str(SHAPES_LAYOUT)],
                 ["inpaint", str(tmp_path / "src.png"), str(tmp_path / "edits.yaml")]):
        result = runner.invoke(app, [*args, "-o", str(tmp_path / name)])
        assert result.exit_code == 2, result.output
        assert "expected a file name ending in .png" in _squeeze(result.output)
    assert list(tmp_path.iterdir()) == []


# 6. `eligen inpaint` checks every input before torch is imported.

INPAINT_CHECKS = r"""
import sys
from pathlib import Path
from eligen.main import app

folder = Path(sys.argv[1])
cases = {
    "missing image": ["no-such.png", "edits.yaml"],
    "broken image": ["broken.png", "edits.yaml"],
    "a folder as the image": ["sub", "edits.yaml"],
    "missing edits": ["source.png", "no-such.yaml"],
    "bad edits": ["source.png", "bad.yaml"],
    "region too small for the model canvas": ["source.png", "tiny-region.yaml"],
}
for name, args in cases.items():
    try:
        app(["inpaint", *(str(folder / a) for a in args), "-o", str(folder / "out.png")], prog_name="eligen")
    except SystemExit as exc:
        assert exc.code == 2, (name, exc.code)
    else:
        raise AssertionError(f"{name}: no error")
assert "torch" not in sys.modules, "torch was imported before the inputs were checked"
assert not (folder / "out.png").exists()
"""


def test_inpaint_checks_its_inputs_before_importing_torch(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (240, 240, 240)).save(tmp_path / "source.png")
    (tmp_path / "broken.png").write_bytes(b"not a PNG at all")
    (tmp_path / "sub").mkdir()
    box = {"prompt": "a red circle", "box": [4, 4, 30, 30]}
    _write(tmp_path / "edits.yaml", {"model": "shapes", "prompt": "a red circle", "entities": [box]})
    _write(tmp_path / "bad.yaml", {"model": "shapes", "prompt": "a red circle", "entities": [{"prompt": "x"}]})
    # 1 px: no latent-cell centre of the model canvas lies in it
    _write(tmp_path / "tiny-region.yaml", {"model": "shapes", "prompt": "a red circle",
                                           "entities": [{"prompt": "a red circle", "box": [1, 1, 2, 2]}]})
    run = subprocess.run([sys.executable, "-c", INPAINT_CHECKS, str(tmp_path)], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 6, run.stderr
    assert "no-such.png: (image): expected an existing image file, there is no file at this path" in errors[0]
    assert "broken.png: (image): expected a readable image" in errors[1]
    assert "sub: (image): expected an existing image file, this is a folder" in errors[2]
    assert "tiny-region.yaml: entities[0].box: expected a region the model can see" in errors[5]


# 7. A PNG written by `eligen inpaint` says what it is and how to re-run it.

def test_generate_on_an_inpainted_png_says_how_to_rerun_it(tiny_model: Path, tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), (200, 180, 160)).save(tmp_path / "photo.png")
    _write(tmp_path / "edits.yaml", {"model": str(tiny_model), "steps": 1, "prompt": "a cat",
                                     "entities": [{"prompt": "a cat", "box": [0, 0, 32, 32]}]})
    out = tmp_path / "edited.png"
    made = runner.invoke(app, ["inpaint", str(tmp_path / "photo.png"), str(tmp_path / "edits.yaml"), "-o", str(out),
                               "--seed", "0", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["generate", str(out), "-o", str(tmp_path / "again.png")])
    assert result.exit_code == 2, result.output
    sha = hashlib.sha256((tmp_path / "photo.png").read_bytes()).hexdigest()
    message = _squeeze(result.output)
    assert f"error: {out}: (metadata): expected a PNG written by `eligen generate`; this one was written by " \
           f"`eligen inpaint` (edits of photo.png, SHA-256 {sha})" in message
    assert "re-run it with `eligen inpaint photo.png EDITS.yaml`" in message
    assert not (tmp_path / "again.png").exists()


# 8 and 10 are cases of tests/test_layout_errors.py (`unquoted_hash_colour`, `layout_is_a_folder`).

def test_eval_names_a_folder_without_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["eval", str(tmp_path / "empty"), "--model", "shapes"])
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / 'empty'}: (folder): expected layout files (*.yaml) in this folder, it holds none" \
        in _squeeze(result.output)


# 9. More entities than the model was trained with, and regions smaller than a token, are warned of.

def test_too_many_entities_and_tiny_regions_are_warned_of(tmp_path: Path) -> None:
    boxes = [[x * 9, y * 9, x * 9 + 5, y * 9 + 5] for y in range(7) for x in range(7)][:50]
    boxes.append([58, 58, 64, 64])
    layout = _shapes_layout(tmp_path, "a red circle", [("a red circle", box) for box in boxes])
    result = runner.invoke(app, ["preview", str(layout), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    out = _squeeze(result.output)
    assert f"warning: {layout}: entities: 50 entities, the model was trained with at most 4 per image" in out
    # each region is 5x5 or 6x6 px = at most 36 px, under one 8x8-px token of the shapes model (VAE factor 4)
    assert f"warning: {layout}: entities: 50 regions smaller than one token (8x8 px on this model): entities[0], " \
           "entities[1]" in out and "and 42 more" in out


def test_the_shipped_declarations_are_true() -> None:
    """The built-in folders' vocabulary is what their T5 tokenizer reads as single tokens, and max_entities is the
    most shapes in a scene of the recipe's training data (`eligen data shapes --n 12000 --seed 1`)."""
    from transformers import AutoTokenizer

    from eligen.pipeline.model_info import declaration, model_folder
    from eligen.pipeline.shapes.scenes import PALETTE, SHAPES, scenes

    for name in ("shapes", "shapes-base"):
        declared = declaration(name)
        assert declared.vocabulary == ["a", "and", *PALETTE, *SHAPES]
        tokenizer = AutoTokenizer.from_pretrained(Path(model_folder(name)) / "tokenizer_2")
        assert all(len(tokenizer(word).input_ids) == 2 for word in declared.vocabulary)  # the word, the end token
        assert len(tokenizer("pink").input_ids) > 2
        assert declared.max_entities == max(len(s.shapes) for s in scenes(12000, 1))


# 11. --help reads like a well-kept CLI's.

def _leaf_commands(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [path]
    return [p for name, sub in subcommands.items() for p in _leaf_commands(sub, (*path, name))]


def test_help_has_no_placeholders_and_shows_examples() -> None:
    import typer.main

    root = typer.main.get_command(app)
    leaves = _leaf_commands(root)
    assert len(leaves) >= 10
    for path in [(), ("data",), *leaves]:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        for placeholder in ("<list[", "{", "<int", "<str", "<float", "<path"):
            assert placeholder not in result.output, (path, placeholder, result.output)
        if path in leaves:
            assert "  Examples:\n    eligen " in result.output, path
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).output
    assert "..." not in listing.split("Commands:")[1]
    for name, command in root.commands.items():
        first = " ".join((command.help or "").split("\n\n")[0].split())
        assert f"{name} {first}" in _squeeze(listing), name  # the whole description, not cut off


# 12. The README points to the CPU-only install, which the getting-started guide gives.

def test_readme_points_to_the_cpu_only_install() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    guide = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert "docs/getting-started.md#without-a-gpu-a-cpu-only-pytorch-first" in readme
    assert "## Without a GPU: a CPU-only PyTorch first" in guide
    section = guide.split("## Without a GPU: a CPU-only PyTorch first")[1].split("\n## ")[0]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in section
    assert "pip install . && eligen generate layouts/shapes.yaml --preview" in readme  # the set-up command kept


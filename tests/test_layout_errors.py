"""Malformed layout files through the real CLI: exit status 2, one clear message, no traceback, no output.

Every case is run twice, through `eligen preview LAYOUT -o OUT` and `eligen generate LAYOUT --dry-run -o OUT`.
The message must read `error: FILE: FIELD: EXPECTATION` (plus `hint: ...` for likely mistakes). Messages are
compared with all whitespace removed, so line wrapping does not decide these tests;
`test_message_is_one_unwrapped_line` checks the wrapping itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner, Result

from eligen.main import app

LAYOUT = "layout.yaml"
BOX = "[64, 64, 512, 512]"  # a valid region on the default 1024x1024 canvas


@dataclass(frozen=True)
class Case:
    """A malformed layout, the field its message must name, and words the message must contain."""

    id: str
    text: str | bytes | None  # None: the layout file is not written at all
    field: str | tuple[str, ...]  # the field, or the acceptable alternatives
    words: tuple[str, ...]
    hint: tuple[str, ...] = ()  # words the `hint:` must contain; empty when no hint is required
    extra: dict[str, bytes] = field(default_factory=dict)


def _png(array: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _colours() -> bytes:
    """A 64x64 colour mask: red on the left half, blue on the right; no green anywhere."""
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[:, :32] = (255, 0, 0)
    array[:, 32:] = (0, 0, 255)
    return _png(array)


BLACK_MASK = _png(np.zeros((64, 64), dtype=np.uint8))
COLOURS = _colours()
GARBAGE = b"this is not a PNG file \x00\x01\x02\xff"


CASES = [
    Case("bad_yaml", "prompt: a desk\nsteps: 3\n  cfg: 2\n", "(yaml)", ("expected valid YAML", "line 3")),
    Case("bad_yaml_tab", f"prompt: a\nentities:\n  - prompt: x\n\tbox: {BOX}\n", "(yaml)",
         ("expected valid YAML", "line 4")),
    Case("nested_5000_deep", "prompt: " + "[" * 5000 + "]" * 5000 + "\n", "(yaml)",
         ("nested at most a few hundred levels deep", "recursion limit")),
    Case("empty_file", "", "(file)", ("empty",)),
    Case("not_utf8", b"prompt: \xff\xfe a desk\n", "(file)", ("UTF-8",)),
    Case("layout_file_missing", None, "(file)", ("existing layout file", "no file at this path")),
    Case("layout_is_a_folder", None, "(file)", ("expected a layout file", "this is a folder"),
         ("1 .yaml file", "layout.yaml/*.yaml", "eligen eval", "folders"),
         extra={"layout.yaml/scene.yaml": b"prompt: a"}),
    Case("top_level_list", "- prompt: a desk\n- prompt: a chair\n", "(top level)", ("mapping", "list")),
    Case("version_2", "version: 2\nprompt: a desk\n", "version", ("expected 1", "got 2"), ("version-1",)),
    Case("unknown_top_level_key", "prompt: a desk\nseeds: [1, 2]\n", "seeds", ("unknown key",), ("seed", "entities")),
    Case("unknown_entity_key", f"prompt: a\nentities:\n  - prompt: x\n    box: {BOX}\n"
         f"  - prompt: y\n    box: {BOX}\n    weight: 2\n", "entities[1].weight", ("unknown key",),
         ("prompt", "box", "polygon", "mask", "color")),
    Case("missing_prompt", f"entities:\n  - prompt: x\n    box: {BOX}\n", "prompt", ("required",)),
    Case("entity_missing_prompt", f"prompt: a\nentities:\n  - prompt: x\n    box: {BOX}\n  - box: {BOX}\n",
         "entities[1].prompt", ("required",)),
    Case("two_regions", f"prompt: a\nentities:\n  - prompt: x\n    box: {BOX}\n"
         f"  - prompt: y\n    box: {BOX}\n    polygon: [[0, 0], [100, 0], [0, 100]]\n",
         "entities[1]", ("exactly one region", "found box, polygon")),
    Case("no_region", "prompt: a\nentities:\n  - prompt: x\n", "entities[0]", ("exactly one region", "found none")),
    Case("box_given_twice", f"prompt: a\nentities:\n  - prompt: x\n    box: {BOX}\n    box: [0, 0, 16, 16]\n",
         ("(yaml)", "entities[0]", "entities[0].box"), ("duplicate", "box")),
    Case("box_outside_canvas", f"prompt: a\nentities:\n  - prompt: x\n    box: {BOX}\n"
         "  - prompt: y\n    box: [600, 100, 1100, 500]\n", "entities[1].box",
         ("expected coordinates inside the canvas", "0..1024 x 0..1024", "1100")),
    Case("box_inverted", "prompt: a\nentities:\n  - prompt: x\n    box: [600, 100, 100, 500]\n", "entities[0].box",
         ("expected [x1, y1, x2, y2]", "x1 < x2", "[600.0, 100.0, 100.0, 500.0]")),
    Case("box_three_numbers", "prompt: a\nentities:\n  - prompt: x\n    box: [0, 0, 512]\n", "entities[0].box",
         ("[x1, y1, x2, y2]",)),
    Case("size_not_multiple_of_16", "prompt: a\nsize: [1000, 1024]\n", "size",
         ("expected [width, height]", "multiples of 16", "[1000, 1024]")),
    Case("negative_steps", "prompt: a\nsteps: -5\n", "steps", ("greater than 0", "-5")),
    Case("seed_list_empty", "prompt: a\nseed: []\n", "seed", ("non-empty list",)),
    Case("negative_seed", "prompt: a\nseed: -1\n", "seed", ("integer from 0", "-1")),
    Case("seed_boolean", "prompt: a\nseed: true\n", "seed", ("integer",)),
    Case("polygon_two_points", "prompt: a\nentities:\n  - prompt: x\n    polygon: [[0, 0], [100, 100]]\n",
         "entities[0].polygon", ("at least 3",)),
    # YAML reads an unquoted `#` as a comment: `color:` is then empty (issue 15)
    Case("unquoted_hash_colour", "prompt: a\nsize: [64, 64]\ncolor_mask: colours.png\nentities:\n  - prompt: x\n"
         "    color: #ff0000\n", "entities[0].color", ("expected a value", "empty"),
         ("unquoted #", "comment", 'color: "#dc1e1e"'), extra={"colours.png": COLOURS}),
    Case("bad_colour_string", "prompt: a\nsize: [64, 64]\ncolor_mask: colours.png\nentities:\n  - prompt: x\n"
         "    color: red\n",
         "entities[0].color", ('"#rrggbb"', "'red'"), extra={"colours.png": COLOURS}),
    Case("colour_without_color_mask", "prompt: a\nentities:\n  - prompt: x\n    color: '#ff0000'\n",
         ("color_mask", "entities[0].color"), ("color_mask", "required")),
    Case("colour_not_in_color_mask", "prompt: a\nsize: [64, 64]\ncolor_mask: colours.png\nentities:\n  - prompt: x\n"
         "    color: '#00ff00'\n", "entities[0].color", ("present in color_mask", "#00ff00"),
         ("#ff0000", "#0000ff"), extra={"colours.png": COLOURS}),
    Case("color_mask_file_missing", "prompt: a\ncolor_mask: no-colours.png\nentities:\n  - prompt: x\n"
         "    color: '#ff0000'\n", "color_mask", ("no-colours.png", "does not exist")),
    Case("mask_file_missing", "prompt: a\nentities:\n  - prompt: x\n    mask: masks/missing.png\n",
         "entities[0].mask", ("expected an image file", "masks/missing.png", "does not exist")),
    Case("mask_not_an_image", "prompt: a\nentities:\n  - prompt: x\n    mask: masks/garbage.png\n",
         "entities[0].mask", ("expected a readable image", "masks/garbage.png"),
         extra={"masks/garbage.png": GARBAGE}),
    Case("mask_all_black", "prompt: a\nentities:\n  - prompt: x\n    mask: masks/black.png\n",
         "entities[0].mask", ("non-empty region", "no pixel"), extra={"masks/black.png": BLACK_MASK}),
    Case("polygon_covers_no_pixel", "prompt: a\nentities:\n  - prompt: x\n"
         "    polygon: [[10, 10], [100, 100], [200, 200]]\n", "entities[0].polygon", ("non-empty region",)),
    # 4x4 px between latent-cell centres: pixels 5..8 are inside, the 8-px cells sample pixels 4, 12, ...
    Case("region_smaller_than_one_token", "prompt: a\nentities:\n  - prompt: x\n    box: [5, 5, 9, 9]\n",
         "entities[0].box", ("covers no token", "64x64 token grid"), ("16x16 px", "larger")),
    Case("units_px_with_fractions", "prompt: a\nentities:\n  - prompt: x\n    box: [0.1, 0.1, 0.5, 0.5]\n"
         "  - prompt: y\n    polygon: [[0.5, 0.5], [0.9, 0.5], [0.7, 0.9]]\n", "units",
         ("within 0..1", "units: px"), ("units: fraction",)),
    Case("units_fraction_above_1", "prompt: a\nunits: fraction\nentities:\n  - prompt: x\n"
         "    box: [0.1, 0.1, 1.5, 0.5]\n", "entities[0].box", ("inside the canvas", "0..1 in units fraction"),
         ("units: fraction", "0..1")),
    Case("units_permille_above_1000", "prompt: a\nunits: permille\nentities:\n  - prompt: x\n"
         "    polygon: [[100, 100], [1200, 100], [100, 900]]\n", "entities[0].polygon",
         ("inside the canvas", "0..1000 in units permille"), ("permille", "0..1000")),
    Case("unknown_units", "prompt: a\nunits: inches\n", "units", ("'px', 'fraction' or 'permille'", "'inches'")),
    Case("unknown_schedule", "prompt: a\nschedule: euler\n", "schedule",
         ("'scheduler', 'shift3' or 'reference'", "'euler'")),
    # the message quotes the value back; it must be printed as text, not as terminal markup
    Case("value_like_markup", "prompt: a\nschedule: '[/flux]'\n", "schedule",
         ("'scheduler', 'shift3' or 'reference'", "'[/flux]'")),
    Case("model_folder_missing", "prompt: a\nmodel: ./no-such-folder\n", "model", ("no-such-folder", "does not exist")),
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner working in an empty temporary folder, as a person would in a project folder."""
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def _squeeze(text: str) -> str:
    """The text without any whitespace, so a message reads the same however it was wrapped."""
    return "".join(text.split())


def _stderr(result: Result) -> str:
    return result.stderr if hasattr(result, "stderr") else result.output


def _assert_rejected(result: Result, source: str, field: str | tuple[str, ...], words: tuple[str, ...],
                     hint: tuple[str, ...] = ()) -> None:
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    stderr = _squeeze(_stderr(result))
    fields = (field,) if isinstance(field, str) else field
    heads = [_squeeze(f"error: {source}: {name}: ") for name in fields]
    assert any(stderr.startswith(head) for head in heads), f"expected one of {heads}, got:\n{output}"
    for word in words:
        assert _squeeze(word).lower() in stderr.lower(), f"{word!r} missing from:\n{output}"
    if hint:
        assert "hint:" in stderr, output
        hint_text = stderr.split("hint:", 1)[1].lower()
        for word in hint:
            assert _squeeze(word).lower() in hint_text, f"hint lacks {word!r}:\n{output}"
    assert stderr.count("error:") == 1, output


COMMANDS = {
    "preview": ["preview", LAYOUT, "-o", "out.png"],
    "generate-dry-run": ["generate", LAYOUT, "--dry-run", "-o", "out.png"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_layout_is_rejected(case: Case, command: str, runner: CliRunner, tmp_path: Path) -> None:
    for name, content in case.extra.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    if case.text is not None:
        data = case.text.encode() if isinstance(case.text, str) else case.text
        (tmp_path / LAYOUT).write_bytes(data)
    before = _files(tmp_path)

    result = runner.invoke(app, COMMANDS[command])

    _assert_rejected(result, LAYOUT, case.field, case.words, case.hint)
    assert _files(tmp_path) == before, "a rejected layout must not write any file"


def test_cases_cover_the_contract() -> None:
    """At least 20 malformed files, each with its own id."""
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


def test_message_is_one_unwrapped_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`error: FILE: FIELD: EXPECTATION` stays on one line, whatever the path length (logs, grep, editors)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / ("a-project-folder-with-a-rather-long-name-" * 3)
    folder.mkdir()
    layout = folder / LAYOUT
    layout.write_text("prompt: a\nentities:\n  - prompt: x\n    box: [600, 100, 100, 500]\n")

    result = CliRunner().invoke(app, ["preview", str(layout), "-o", "out.png"])

    assert result.exit_code == 2
    lines = _stderr(result).splitlines()
    assert lines[0].startswith(f"error: {layout}: entities[0].box: expected "), lines
    assert "x1 < x2 and y1 < y2" in lines[0]
    assert len(lines) == 1, lines


def test_file_name_with_brackets_is_printed_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("desk [v2].yaml").write_text("prompt: a\nsteps: 0\n")

    result = CliRunner().invoke(app, ["preview", "desk [v2].yaml", "-o", "out.png"])

    _assert_rejected(result, "desk [v2].yaml", "steps", ("greater than 0",))


def _eligen_png(path: Path, layout: dict) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("eligen", json.dumps({"seed": 1, "layout": layout}), zip=True)
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)


@pytest.mark.parametrize("command", ["preview", "generate"])
def test_png_with_malformed_embedded_layout(command: str, runner: CliRunner, tmp_path: Path) -> None:
    """A PNG re-run validates its embedded layout like a file and names the PNG."""
    _eligen_png(tmp_path / "image.png", {"prompt": "a", "size": [64, 64], "steps": 0})
    before = _files(tmp_path)
    args = [command, "image.png", "-o", "out.png"] + (["--dry-run"] if command == "generate" else [])

    result = runner.invoke(app, args)

    _assert_rejected(result, "image.png", "steps", ("greater than 0",))
    assert _files(tmp_path) == before


@pytest.mark.parametrize("command", ["preview", "generate"])
def test_png_with_metadata_nested_too_deeply(command: str, runner: CliRunner, tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("eligen", '{"layout": ' + "[" * 5000 + "]" * 5000 + "}", zip=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png", pnginfo=info)
    before = _files(tmp_path)
    args = [command, "image.png", "-o", "out.png"] + (["--dry-run"] if command == "generate" else [])

    result = runner.invoke(app, args)

    _assert_rejected(result, "image.png", "(file)", ("readable PNG written by eligen", "nested at most"))
    assert _files(tmp_path) == before


@pytest.mark.parametrize("command", ["preview", "generate"])
def test_png_without_eligen_metadata(command: str, runner: CliRunner, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    before = _files(tmp_path)
    args = [command, "photo.png", "-o", "out.png"] + (["--dry-run"] if command == "generate" else [])

    result = runner.invoke(app, args)

    _assert_rejected(result, "photo.png", "(metadata)", ("written by eligen", "layout"))
    assert _files(tmp_path) == before


def test_generate_rejects_every_layout_before_writing(runner: CliRunner, tmp_path: Path) -> None:
    """With several layouts, one bad file stops the run before any preview is written."""
    head = "prompt: a\nsize: [512, 512]\nentities:\n  - prompt: x\n"  # a size FLUX.1-dev warns nothing of
    (tmp_path / "good.yaml").write_text(head + "    box: [0, 0, 256, 256]\n")
    (tmp_path / "bad.yaml").write_text(head + "    box: [0, 0, 999, 256]\n")
    before = _files(tmp_path)

    result = runner.invoke(app, ["generate", "good.yaml", "bad.yaml", "--dry-run"])

    _assert_rejected(result, "bad.yaml", "entities[0].box", ("inside the canvas", "0..512 x 0..512"))
    assert _files(tmp_path) == before

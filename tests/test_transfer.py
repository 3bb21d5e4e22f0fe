"""`eligen transfer` and the IP-Adapter options on the command line, on the tiny FLUX model: the panel, the pinned
source panel, both LoRAs active, and bad inputs (exit 2, a message naming the problem, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import LoraSpec
from eligen.pipeline.regions import entity_masks
from eligen.pipeline.shapes.tiny_ip_adapter import build_tiny_ip_adapters
from eligen.pipeline.transfer import prepare_transfer, transfer
from eligen.pipeline.transfer_canvas import crop_and_resize, read_transfer, transfer_canvas

runner = CliRunner()
PROMPT = ("The two-panel image showcases the joyful identity, with the left panel showing a rabbit graphic; [LEFT] "
          "while the right panel translates the design onto a tote")


def random_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def kohya_lora(path: Path, seed: int) -> Path:
    """A random LoRA on the tiny model's first dual block (width 32)."""
    generator = torch.Generator().manual_seed(seed)
    safetensors.torch.save_file({
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 32, generator=generator),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(96, 4, generator=generator),
    }, str(path))
    return path


@pytest.fixture
def job(tmp_path: Path, tiny_model: Path) -> Path:
    """source.png (80 x 60), target.png (120 x 90), a transfer file whose box touches the right panel's left edge
    (its blend margin would cross the seam) and an EliGen-style LoRA; returns the folder."""
    random_image(tmp_path / "source.png", (80, 60), 1)
    random_image(tmp_path / "target.png", (120, 90), 2)
    kohya_lora(tmp_path / "eligen.safetensors", 3)
    kohya_lora(tmp_path / "in-context.safetensors", 4)
    data = {"model": str(tiny_model), "target": "target.png", "prompt": PROMPT, "steps": 2, "cfg": 2.0, "seed": 5,
            "loras": [{"path": "eligen.safetensors"}],
            "entities": [{"prompt": "a rabbit logo", "box": [0, 20, 60, 80]}]}
    (tmp_path / "tote.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def run_transfer(folder: Path, *options: str):
    return runner.invoke(app, ["transfer", str(folder / "source.png"), str(folder / "tote.yaml"),
                               "--in-context-lora", str(folder / "in-context.safetensors"), *options])


def test_transfer_writes_the_target_panel_and_pins_the_source_panel(job: Path) -> None:
    out = job / "out.png"
    result = run_transfer(job, "--panel", "48x32", "--keep-panels", "-o", str(out))
    assert result.exit_code == 0, result.output
    right = Image.open(out)
    both = np.asarray(Image.open(job / "out.panels.png").convert("RGB"))
    assert right.size == (48, 32) and both.shape == (32, 96, 3)
    expected_left = np.asarray(crop_and_resize(Image.open(job / "source.png").convert("RGB"), (48, 32)))
    assert np.array_equal(both[:, :48], expected_left)  # exact fusion: the source panel unchanged, bit for bit
    assert np.array_equal(both[:, 48:], np.asarray(right.convert("RGB")))
    target_panel = np.asarray(crop_and_resize(Image.open(job / "target.png").convert("RGB"), (48, 32)))
    assert not np.array_equal(both[:, 48:], target_panel)  # the region was repainted


def test_default_panel_keeps_the_target_aspect(job: Path) -> None:
    result = run_transfer(job, "-o", str(job / "out.png"))
    assert result.exit_code == 0, result.output
    width, height = Image.open(job / "out.png").size
    assert width % 16 == 0 and height % 16 == 0 and abs(width / height - 120 / 90) < 0.1
    assert width * height <= 512 * 1024


def test_both_loras_are_active(job: Path, tiny_model: Path) -> None:
    """The layout's LoRA and In-Context LoRA each change the result: leaving out either gives another image."""
    pipe = EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32")
    spec, target = read_transfer(job / "tote.yaml")
    spec = spec.model_copy(update={"loras": [LoraSpec(path=str(job / "eligen.safetensors"))]})
    source = Image.open(job / "source.png").convert("RGB")

    def right_panel(layout_loras: list[LoraSpec], in_context_scale: float) -> np.ndarray:
        edits = spec.model_copy(update={"loras": layout_loras})
        canvas = transfer_canvas(edits, entity_masks(edits, job, same_size=True), source, target, (48, 32))
        in_context = LoraSpec(path=str(job / "in-context.safetensors"), scale=in_context_scale)
        plan = prepare_transfer(pipe, canvas, in_context, job)
        return np.asarray(transfer(pipe, canvas, plan, 5)[0], dtype=np.int16)

    both = right_panel(spec.loras, 1.0)
    without_in_context = right_panel(spec.loras, 0.0)
    without_layout_lora = right_panel([], 1.0)
    assert np.abs(both - without_in_context).max() > 0
    assert np.abs(both - without_layout_lora).max() > 0


@pytest.mark.parametrize(("change", "message"), [
    ("missing_source", "expected an existing image file"),
    ("missing_target", "target: expected an existing image file"),
    ("size_given", "size: expected no `size` in a transfer file"),
    ("no_entities", "an edits file needs at least one entity"),
    ("bad_panel", "expected a panel size W x H"),
])
def test_bad_transfer_inputs_exit_2_and_write_nothing(job: Path, change: str, message: str) -> None:
    data = yaml.safe_load((job / "tote.yaml").read_text())
    options = ["-o", str(job / "out.png"), "--keep-panels"]
    if change == "missing_source":
        (job / "source.png").unlink()
    elif change == "missing_target":
        data["target"] = "nope.png"
    elif change == "size_given":
        data["size"] = [64, 64]
    elif change == "no_entities":
        data["entities"] = []
    else:
        options += ["--panel", "40x32"]
    (job / "tote.yaml").write_text(yaml.safe_dump(data))
    result = run_transfer(job, *options)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (job / "out.png").exists() and not (job / "out.panels.png").exists()


# ---------------------------------------------------------------- --ip-adapter on the command line


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ip_adapters(tmp_path_factory.mktemp("adapters") / "ip", tiny_model, seed=2)


def layout_file(folder: Path, tiny_model: Path, **extra: object) -> Path:
    data = {"model": str(tiny_model), "size": [64, 64], "prompt": "a table", "steps": 2, "seed": 1, "loras": [],
            "entities": [{"prompt": "a red cup", "box": [0, 0, 32, 64]}], **extra}
    path = folder / "layout.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_generate_with_ip_adapter_options(adapters: Path, tiny_model: Path, tmp_path: Path) -> None:
    random_image(tmp_path / "ref.png", (40, 40), 7)
    layout = layout_file(tmp_path, tiny_model)
    common = ["generate", str(layout), "--ip-adapter", str(adapters / "xlabs" / "ip_adapter.safetensors"),
              "--ip-encoder", str(adapters / "xlabs" / "image_encoder"), "--ip-image", str(tmp_path / "ref.png")]
    assert runner.invoke(app, [*common, "-o", str(tmp_path / "styled.png")]).exit_code == 0
    assert runner.invoke(app, [*common, "--ip-scale", "0", "-o", str(tmp_path / "zero.png")]).exit_code == 0
    assert runner.invoke(app, ["generate", str(layout), "-o", str(tmp_path / "plain.png")]).exit_code == 0
    pixels = {n: np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("styled", "zero", "plain")}
    assert np.array_equal(pixels["zero"], pixels["plain"])
    assert not np.array_equal(pixels["styled"], pixels["plain"])


@pytest.mark.parametrize(("case", "message"), [
    ("neither_format", "ip_adapter.path: " + "{other} is not a FLUX IP-Adapter of a known format"),
    ("missing_image", "ip_adapter.image: expected an existing image file"),
    ("reference_without_adapter", "entities[0].reference: expected a top-level `ip_adapter`"),
    ("missing_encoder", "ip_adapter.image_encoder: expected an image encoder folder or a hub id (org/name), "
                        "{tmp}/no-such-encoder does not exist"),
    ("encoder_is_a_file", "ip_adapter.image_encoder: expected an image encoder folder or a hub id, {tmp}/ref.png "
                          "is a file"),
])
def test_bad_adapter_inputs_exit_2_and_write_nothing(case: str, message: str, adapters: Path, tiny_model: Path,
                                                     tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    kohya_lora(other, 1)
    random_image(tmp_path / "ref.png", (40, 40), 7)
    if case == "reference_without_adapter":
        layout = layout_file(tmp_path, tiny_model, entities=[
            {"prompt": "a red cup", "box": [0, 0, 32, 64], "reference": {"image": "ref.png"}}])
        options: list[str] = []
    else:
        layout = layout_file(tmp_path, tiny_model)
        adapter = other if case == "neither_format" else adapters / "instantx" / "ip-adapter.bin"
        image = tmp_path / ("ref.png" if case == "neither_format" else "missing.png")
        options = ["--ip-adapter", str(adapter), "--ip-image", str(image)]
        if case.endswith("encoder") or case.startswith("encoder"):  # checked with the other inputs, before loading
            options = ["--ip-adapter", str(adapter), "--ip-image", str(tmp_path / "ref.png"), "--ip-encoder",
                       str(tmp_path / ("no-such-encoder" if case == "missing_encoder" else "ref.png"))]
    result = runner.invoke(app, ["generate", str(layout), *options, "--preview", "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 2, result.output
    assert message.format(other=other, tmp=tmp_path) in " ".join(result.output.split())
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.preview.png").exists()


def test_a_png_with_references_reruns_from_another_folder(adapters: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The layout embedded in the PNG holds the adapter and reference paths absolute: re-running the PNG moved
    elsewhere finds them and gives the same image."""
    folder = tmp_path / "job"
    folder.mkdir()
    random_image(folder / "ref.png", (40, 40), 7)
    layout = layout_file(folder, tiny_model, ip_adapter={
        "path": str(adapters / "instantx" / "ip-adapter.bin"), "image": "ref.png",
        "image_encoder": str(adapters / "instantx" / "image_encoder")})
    assert runner.invoke(app, ["generate", str(layout), "-o", str(folder / "first.png")]).exit_code == 0
    moved = tmp_path / "elsewhere" / "first.png"
    moved.parent.mkdir()
    (folder / "first.png").rename(moved)
    result = runner.invoke(app, ["generate", str(moved), "-o", str(tmp_path / "again.png")])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(moved)), np.asarray(Image.open(tmp_path / "again.png")))


def test_an_inpainted_png_records_its_references_absolute(adapters: Path, tiny_model: Path, tmp_path: Path) -> None:
    """Inpaint's PNG embeds the edits with the adapter and reference paths resolved, as generate's does."""
    random_image(tmp_path / "photo.png", (64, 64), 3)
    random_image(tmp_path / "ref.png", (40, 40), 7)
    edits = tmp_path / "edits.yaml"
    edits.write_text(yaml.safe_dump({"model": str(tiny_model), "prompt": "a table", "steps": 2, "seed": 1,
                                     "loras": [], "entities": [{"prompt": "a red cup", "box": [0, 0, 32, 64],
                                                                "reference": {"image": "ref.png"}}],
                                     "ip_adapter": {"path": str(adapters / "instantx" / "ip-adapter.bin"),
                                                    "image_encoder": str(adapters / "instantx" / "image_encoder")}}))
    result = runner.invoke(app, ["inpaint", str(tmp_path / "photo.png"), str(edits), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    recorded = json.loads(Image.open(tmp_path / "o.png").text["eligen"])["edits"]
    assert recorded["entities"][0]["reference"]["image"] == str((tmp_path / "ref.png").resolve())

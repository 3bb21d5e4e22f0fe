"""SHA-256 of every image each front end renders on tiny offline models: a check that a refactoring of the render
path changed no output.

Renders with `eligen generate` (tiny FLUX, tiny Qwen-Image, the built-in shapes model, IP-Adapter, attention maps),
`eligen inpaint` (both fusions), `eligen transfer`, `eligen eval`, the Python API (`generate`, inpainting), the
studio's engine, the chat's renderer and training validation, then prints one `name sha256` line per image (PNG
files as written, metadata included; in-memory images as their raw RGB bytes). Run it before and after a change on
the same machine and compare the two outputs with `diff`:

    python scripts/render_fingerprints.py > before.txt
    ... change ...
    python scripts/render_fingerprints.py > after.txt && diff before.txt after.txt

`--pixels` hashes the decoded pixels of the PNGs instead of their bytes (for a change that alters metadata only).

Takes about a minute on one CPU thread.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from eligen.main import app
from eligen.pipeline.shapes.tiny_flux import build_tiny_flux
from eligen.pipeline.shapes.tiny_ip_adapter import build_tiny_ip_adapters
from eligen.pipeline.shapes.tiny_qwen_image import build_tiny_qwen_image

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


PIXELS = "--pixels" in sys.argv  # hash a PNG's decoded pixels instead of its bytes (metadata left out)


def sha_file(path: Path) -> str:
    if PIXELS:
        with Image.open(path) as image:
            return sha_image(image)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha_image(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def sha_png(data: bytes) -> str:
    if PIXELS:
        with Image.open(io.BytesIO(data)) as image:
            return sha_image(image)
    return hashlib.sha256(data).hexdigest()


def cli(*args: str) -> None:
    """Run an `eligen` command in this process; stop on failure."""
    result = runner.invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        sys.exit(f"eligen {' '.join(map(str, args))} failed ({result.exit_code}):\n{result.output}")


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def kohya_lora(path: Path, seed: int) -> Path:
    """A small random LoRA on the tiny FLUX's first double block (kohya keys)."""
    generator = torch.Generator().manual_seed(seed)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 32, generator=generator),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(96, 4, generator=generator)}, path)
    return path


def wait(engine: object, job: object) -> None:
    while job.state in ("queued", "running"):  # type: ignore[attr-defined]
        time.sleep(0.02)
    if job.state != "done":  # type: ignore[attr-defined]
        sys.exit(f"studio job failed: {job.error}")  # type: ignore[attr-defined]


def render_all(tmp: Path) -> list[tuple[str, str]]:
    """(name, SHA-256) of every image rendered under `tmp`."""
    lines: list[tuple[str, str]] = []
    flux = build_tiny_flux(tmp / "tiny-flux", seed=0)
    qwen = build_tiny_qwen_image(tmp / "tiny-qwen", seed=0)
    adapters = build_tiny_ip_adapters(tmp / "ip", flux, seed=2)
    out = tmp / "out"
    out.mkdir()

    def files(name: str, pattern: str, folder: Path = out) -> None:
        for path in sorted(folder.glob(pattern)):
            lines.append((f"{name}:{path.name}", sha_file(path)))

    def image(name: str, value: Image.Image) -> None:
        lines.append((name, sha_image(value)))

    entities = [{"prompt": "a red cup", "box": [0, 0, 32, 32]}, {"prompt": "a blue plate", "box": [32, 16, 64, 64]}]
    flux_layout = write_yaml(tmp / "flux.yaml", {"model": str(flux), "size": [64, 64], "prompt": "a table",
                                                 "steps": 3, "seed": [1, 2], "loras": [], "entities": entities})
    # generate
    cli("generate", flux_layout, "-o", out / "flux.png", "--preview")
    cli("generate", flux_layout, "-o", out / "flux-maps.png", "--seed", "3", "--attention-maps",
        "--attention-step", "2")
    cli("generate", flux_layout, "-o", out / "flux-batch.png", "--seed", "4", "--batch-cfg", "--attention",
        "split")
    cli("generate", out / "flux-1.png", "-o", out / "flux-rerun.png")
    qwen_layout = write_yaml(tmp / "qwen.yaml", {"model": str(qwen), "size": [64, 64], "prompt": "a table",
                                                 "seed": 5, "loras": [], "entities": entities})
    cli("generate", qwen_layout, "-o", out / "qwen.png")  # the family's steps, cfg, negative prompt
    cli("generate", qwen_layout, "-o", out / "qwen-steps.png", "--steps", "3", "--schedule", "diffsynth")
    cli("generate", REPO / "layouts" / "shapes.yaml", "-o", out / "shapes.png", "--steps", "8")
    cli("generate", flux_layout, "-o", out / "ip.png", "--seed", "1", "--ip-adapter",
        adapters / "xlabs" / "ip_adapter.safetensors", "--ip-encoder", adapters / "xlabs" / "image_encoder",
        "--ip-image", REPO / "layouts" / "inpaint" / "photo.png")
    files("generate", "*.png")
    # inpaint
    photo = REPO / "layouts" / "inpaint" / "photo.png"
    for fusion in ("exact", "paper"):
        edits = write_yaml(tmp / f"edits-{fusion}.yaml", {
            "model": str(flux), "prompt": "a house", "steps": 3, "seed": [7, 8], "loras": [], "fusion": fusion,
            "entities": [{"prompt": "a red car", "box": [280, 250, 420, 330]}]})
        cli("inpaint", photo, edits, "-o", out / "inpaint" / f"{fusion}.png")
    qwen_edits = write_yaml(tmp / "edits-qwen.yaml", {
        "model": str(qwen), "prompt": "a house", "steps": 3, "seed": 9, "loras": [],
        "entities": [{"prompt": "a red car", "box": [280, 250, 420, 330]}]})
    cli("inpaint", photo, qwen_edits, "-o", out / "inpaint" / "qwen.png")
    files("inpaint", "*.png", out / "inpaint")
    # transfer
    kohya_lora(tmp / "eligen.safetensors", 3)
    kohya_lora(tmp / "in-context.safetensors", 4)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp / "logo.png")
    Image.new("RGB", (64, 64), (240, 240, 240)).save(tmp / "tote.png")
    for fusion in ("exact", "paper"):
        spec = write_yaml(tmp / f"transfer-{fusion}.yaml", {
            "model": str(flux), "target": "tote.png", "prompt": "two panels; [LEFT] a logo, right a tote",
            "steps": 2, "seed": 1, "fusion": fusion, "loras": [{"path": "eligen.safetensors"}],
            "entities": [{"prompt": "the logo on the tote", "box": [16, 16, 48, 48]}]})
        cli("transfer", tmp / "logo.png", spec, "--in-context-lora", tmp / "in-context.safetensors",
            "--keep-panels", "-o", out / "transfer" / f"{fusion}.png")
    files("transfer", "*.png", out / "transfer")
    # eval (shapes layouts scored by the shapes detector)
    cli("eval", REPO / "layouts" / "shapes.yaml", "--model", "shapes", "--seeds", "2", "--steps", "4",
        "--device", "cpu", "-o", out / "eval")
    cli("eval", flux_layout, "--seeds", "1", "--steps", "2", "--device", "cpu", "--scorer", "shapes",
        "-o", out / "eval-flux")
    files("eval", "*.png", out / "eval" / "images")
    files("eval-flux", "*.png", out / "eval-flux" / "images")
    # Python API
    from eligen.pipeline.generate import EligenPipeline
    from eligen.pipeline.inpaint import inpaint, place, prepare
    from eligen.pipeline.layout import load_layout, parse_edits, parse_layout
    from eligen.pipeline.regions import entity_masks

    pipes = {name: EligenPipeline.from_pretrained(str(path), device="cpu", dtype="fp32")
             for name, path in (("flux", flux), ("qwen", qwen))}
    for name, pipe in pipes.items():
        layout = load_layout(tmp / f"{name}.yaml")
        for seed, value in zip((0, 1), pipe.generate(layout, seeds=[0, 1], base_dir=tmp), strict=True):
            image(f"api:generate:{name}:{seed}", value)
        source = Image.open(photo).convert("RGB")
        edits = parse_edits({"model": str(pipe.model), "prompt": "a house", "loras": [],
                             "entities": [{"prompt": "a red car", "box": [280, 250, 420, 330]}]}, source.size)
        masks = entity_masks(edits, tmp, same_size=True)
        canvas = place(edits, masks, source.size, pipe.scale_factor)
        image(f"api:inpaint:{name}", inpaint(pipe, prepare(pipe, canvas, source, tmp), seed=0))
    # studio engine
    from eligen.pipeline.model_defaults import with_model_defaults
    from eligen.studio.engine import Engine
    from eligen.studio.inputs import SourceImage

    for name, pipe in pipes.items():
        engine = Engine(pipe, pipe.model)
        layout = with_model_defaults(parse_layout({"model": pipe.model, "size": [64, 64], "prompt": "a table",
                                                   "seed": [1], "loras": [], "entities": entities}), pipe.model)
        job = engine.submit_generate(layout)
        wait(engine, job)
        lines.append((f"studio:generate:{name}", hashlib.sha256(engine.result(job.results[0]).png).hexdigest()))
        source = Image.open(photo).convert("RGB")
        data = photo.read_bytes()
        picture = SourceImage("photo.png", source, hashlib.sha256(data).hexdigest())
        edits = with_model_defaults(parse_edits({"model": pipe.model, "prompt": "a house", "loras": [], "seed": 2,
                                                 "entities": [{"prompt": "a red car",
                                                               "box": [280, 250, 420, 330]}]}, source.size),
                                    pipe.model)
        job = engine.submit_inpaint(edits, picture)
        wait(engine, job)
        lines.append((f"studio:inpaint:{name}", hashlib.sha256(engine.result(job.results[0]).png).hexdigest()))
    # the chat's renderer
    from eligen.agent.render import Renderer

    renderer = Renderer(device="cpu", dtype="fp32")
    (out / "chat").mkdir()
    for name in pipes:
        layout = load_layout(tmp / f"{name}.yaml")
        renderer.generate(layout, tmp, 3, out / "chat" / f"{name}.png")
        edits = parse_edits({"model": str(pipes[name].model), "prompt": "a house", "loras": [], "steps": 2,
                             "entities": [{"prompt": "a red car", "box": [280, 250, 420, 330]}]}, (600, 400))
        renderer.inpaint(photo, edits, tmp, 4, out / "chat" / f"{name}-inpaint.png")
    files("chat", "*.png", out / "chat")
    # training validation
    from eligen.pipeline import model_info
    from eligen.pipeline.train.validation import prepare_cases, read_validation, render_grid

    for name, pipe in pipes.items():
        validation = read_validation(tmp / f"{name}.yaml", [], tmp)
        cases = prepare_cases(pipe, validation, model_info.default_max_sequence_length(pipe.model))
        image(f"validation:{name}", render_grid(pipe, cases))
    return lines


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    # a fixed folder: the PNGs record absolute paths, which must be the same in every run
    tmp = Path(tempfile.gettempdir()) / "eligen-render-fingerprints"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        lines = render_all(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, digest in lines:
        print(f"{name} {digest}")


if __name__ == "__main__":
    main()

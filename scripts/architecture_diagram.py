"""Draw docs/images/architecture.png: how a layout flows from a front end to the sampler (docs/architecture.md).

    python scripts/architecture_diagram.py [OUTPUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1400, 850
FRONT = (225, 236, 250)
RENDER = (255, 236, 200)
CORE = (222, 245, 222)
FAMILY = (245, 225, 240)
INK = (30, 30, 30)

FRONT_ENDS = [("eligen generate", "layout YAML or PNG"), ("eligen inpaint", "image + edits"),
              ("eligen transfer", "two-panel canvas"), ("eligen eval", "benchmark items"),
              ("eligen studio", "browser canvas"), ("eligen chat", "MLLM-made layouts"),
              ("eligen train", "validation grid"), ("Python API", "render(), generate()")]


def box(draw: ImageDraw.ImageDraw, xy: tuple[int, int, int, int], fill: tuple[int, int, int], title: str,
        lines: list[str], font: ImageFont.FreeTypeFont, small: ImageFont.FreeTypeFont) -> None:
    draw.rounded_rectangle(xy, radius=12, fill=fill, outline=INK, width=2)
    x0, y0, _, _ = xy
    draw.text((x0 + 12, y0 + 8), title, fill=INK, font=font)
    for i, line in enumerate(lines):
        draw.text((x0 + 12, y0 + 36 + 20 * i), line, fill=INK, font=small)


def arrow(draw: ImageDraw.ImageDraw, start: tuple[int, int], end: tuple[int, int], label: str = "",
          font: ImageFont.FreeTypeFont | None = None) -> None:
    draw.line([start, end], fill=INK, width=3)
    (x0, y0), (x1, y1) = start, end
    length = max(1.0, ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    head = [(x1, y1), (x1 - 14 * ux + 7 * uy, y1 - 14 * uy - 7 * ux), (x1 - 14 * ux - 7 * uy, y1 - 14 * uy + 7 * ux)]
    draw.polygon(head, fill=INK)
    if label and font is not None:
        draw.text(((x0 + x1) / 2 + 8, (y0 + y1) / 2 - 10), label, fill=INK, font=font)


def diagram() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=20), ImageFont.load_default(size=15)
    draw.text((20, 14), "eligen: how a layout flows from a front end to the sampler", fill=INK, font=font)
    # front ends: parse and validate, then call render
    draw.text((20, 52), "front ends (parse, validate, report, write; no model math)", fill=INK, font=small)
    for i, (name, what) in enumerate(FRONT_ENDS):
        x = 20 + i * 172
        box(draw, (x, 76, x + 160, 150), FRONT, name, [what], small, small)
        arrow(draw, (x + 80, 150), (700, 212))
    # the render entry point
    box(draw, (330, 214, 1070, 380), RENDER, "pipeline/render.py: prepare_render(pipe, layout, ...) -> Render", [
        "1. the model's defaults (model_defaults: eligen.json, else the family's size/steps/cfg/negative)",
        "2. LoRAs made active (the layout's, else the model's default EliGen LoRA)",
        "3. regions -> pixel masks -> token regions on the model's grid (regions)",
        "4. prompts encoded once: [entities | global] + the regional attention mask (conditioning)",
        "5. inpaint / transfer: source latents and the fusion (inpaint, transfer)",
        "then Render.image(seed) per seed -> Rendered(image, layout as sampled, PNG metadata)"], font, small)
    arrow(draw, (700, 380), (700, 440), "per seed", small)
    # sampler and decode
    box(draw, (330, 442, 1070, 560), CORE, "pipeline/sampler.py: denoise()", [
        "noise (CPU generator) -> schedule (the model's scheduler config, or the reference's shift 3)",
        "Euler steps with true CFG; the regional mask in every block (dense, flex or split)",
        "inpainting fusion outside the regions; then the family's VAE decode"], font, small)
    arrow(draw, (700, 560), (700, 620))
    box(draw, (330, 622, 1070, 700), CORE, "pipeline/outputs.py: save_png(image, path, metadata)", [
        "PNG with the layout as run in an iTXt chunk, written atomically (re-run: eligen generate IMAGE.png)"],
        font, small)
    # the family seam
    box(draw, (1100, 420, 1385, 760), FAMILY, "pipeline/families/", [
        "FamilyDefaults (no torch):", "  defaults, limits, hub ids,", "  schedules, LoRA targets,",
        "  IP-Adapter formats", "ModelFamily (loaded):", "  prompt_encoder, text_ids,", "  velocity, encode_image,",
        "  decode, load_lora,", "  optional: attention_qkv,", "  load_ip_adapter", "", "flux/     qwen_image/"],
        font, small)
    arrow(draw, (1100, 500), (1070, 500), "", small)
    arrow(draw, (1100, 300), (1070, 300), "", small)
    draw.line([(1100, 300), (1240, 300), (1240, 420)], fill=INK, width=3)
    # the layers
    draw.text((20, 790), "Layers: front ends (eligen_cli/, agent/, studio) -> pipeline/render.py -> pipeline/ "
              "(sampler, conditioning, regions, lora, outputs) -> pipeline/families/<family>/.", fill=INK, font=small)
    draw.text((20, 815), "A lower layer never imports a higher one; shared code reaches a family only through "
              "FamilyDefaults and ModelFamily.", fill=INK, font=small)
    return image


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "images" / \
        "architecture.png"
    diagram().save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

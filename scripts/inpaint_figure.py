"""Make docs/images/inpaint-tiny.png: the shipped inpainting example in both fusion modes.

Runs the real command line on a tiny random-weight model (built here with `eligen tiny-model`), so
the repainted regions are noise; the figure shows what each mode keeps of the source.

    python scripts/inpaint_figure.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "layouts" / "inpaint" / "photo.png"
EDITS = REPO / "layouts" / "inpaint" / "edits.yaml"


def eligen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "eligen", *args], check=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny-flux"
        eligen("tiny-model", str(model))
        panels = [("source", Image.open(SOURCE).convert("RGB"))]
        for mode in ("exact", "paper"):
            out = Path(tmp) / f"{mode}.png"
            eligen("inpaint", str(SOURCE), str(EDITS), "--model", str(model), "--steps", "8", "--fusion", mode,
                   "-o", str(out))
            result = Image.open(out).convert("RGB")
            changed = np.abs(np.asarray(result, dtype=int) - np.asarray(panels[0][1], dtype=int)).max(axis=2) > 0
            panels.append((f"fusion: {mode} ({changed.mean():.0%} of pixels changed)", result))
    width, height = panels[0][1].size
    figure = Image.new("RGB", (width * len(panels), height + 24), "white")
    draw = ImageDraw.Draw(figure)
    for i, (label, image) in enumerate(panels):
        figure.paste(image, (i * width, 24))
        draw.text((i * width + 6, 6), label, fill="black")
    target = REPO / "docs" / "images" / "inpaint-tiny.png"
    figure.save(target, optimize=True)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

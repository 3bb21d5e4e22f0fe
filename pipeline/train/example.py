"""A small synthetic training dataset (coloured rectangles on a plain background) for trying `eligen train`
offline, for the tests and for the throughput benchmark."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 205, 40),
           "purple": (140, 50, 170), "black": (20, 20, 20)}
BACKGROUND = (245, 244, 238)


def write_example_dataset(folder: Path, count: int = 8, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """Write `count` images with one or two rectangles each and their `metadata.jsonl`; returns the folder.

    Each rectangle is an entity (`"a red box"` with its `box` in pixels); the global prompt names them all.
    """
    rng = random.Random(seed)
    width, height = size
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        image = Image.new("RGB", size, BACKGROUND)
        draw = ImageDraw.Draw(image)
        names = rng.sample(sorted(COLOURS), rng.choice((1, 2)))
        entities = []
        for j, name in enumerate(names):  # the first box on the left half, the second on the right half
            left = 0 if len(names) == 1 else j * width // 2
            span = width if len(names) == 1 else width // 2
            w, h = rng.randint(span * 2 // 5, span * 4 // 5), rng.randint(height * 2 // 5, height * 4 // 5)
            x, y = left + rng.randint(0, span - w), rng.randint(0, height - h)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[name])
            entities.append({"prompt": f"a {name} box", "box": [x, y, x + w, y + h]})
        image.save(folder / "images" / f"{i:04d}.png")
        prompt = " and ".join(e["prompt"] for e in entities) + " on a white background"
        lines.append(json.dumps({"image": f"images/{i:04d}.png", "prompt": prompt, "entities": entities}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder

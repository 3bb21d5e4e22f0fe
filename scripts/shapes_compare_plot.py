"""Learning curves of the shapes design comparison (recipes/shapes_compare.sh) as a PNG and a Markdown table.

    python scripts/shapes_compare_plot.py RUNS_DIR -o docs/images/shapes-compare.png [--design NAME ...]

For every design folder in RUNS_DIR: the training loss (mean over 25 steps) and, for every scored checkpoint
(`NAME/eval/step-N/results.json`), the success rate and mIoU, each against the process CPU seconds of training
at that step (`cpu_s` of log.jsonl minus its value at the first step). Prints the table; draws three panels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

DESIGNS = ("control", "grid16-warm", "grid16-scratch", "grid8-scratch")
COLOURS = ((30, 30, 30), (215, 40, 40), (40, 70, 215), (40, 160, 60), (245, 135, 25), (135, 50, 165))
PANEL_W, PANEL_H, MARGIN = 360, 240, 44


def curves(run: Path) -> tuple[list[tuple[float, float]], list[tuple[int, float, float, float]]]:
    """(cpu s, mean loss) every 25 steps, and (step, cpu s, success, mIoU) of every scored checkpoint."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    start = rows[0]["cpu_s"] - (rows[1]["cpu_s"] - rows[0]["cpu_s"] if len(rows) > 1 else 0.0)
    cpu = {0: 0.0, **{r["step"]: r["cpu_s"] - start for r in rows}}
    loss = [(cpu[rows[i + 24]["step"]], sum(r["loss"] for r in rows[i:i + 25]) / 25)
            for i in range(0, len(rows) - 24, 25)]
    scored = []
    for results in sorted((run / "eval").glob("step-*/results.json")):
        step = int(results.parent.name.removeprefix("step-"))
        totals = json.loads(results.read_text(encoding="utf-8"))["levels"]["all"]["instance_means"]
        scored.append((step, cpu[step], totals["success"], totals["iou"]))
    return loss, scored


def panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str, series: list[list[tuple[float, float]]],
          x_max: float, y_range: tuple[float, float]) -> None:
    """One axes box at `origin` with a line per series (x: CPU s from 0 to x_max)."""
    ox, oy = origin
    x0, y0, x1, y1 = ox + MARGIN, oy + 20, ox + PANEL_W - 8, oy + PANEL_H - 24
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    draw.text((x0, oy + 4), title, fill=(0, 0, 0))
    lo, hi = y_range
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        y = y1 - (y1 - y0) * k / 4
        draw.line([x0 - 3, y, x0, y], fill=(120, 120, 120))
        draw.text((ox + 2, y - 6), f"{value:.{2 if hi - lo >= 0.1 else 3}f}", fill=(60, 60, 60))
    for k in range(5):
        x = x0 + (x1 - x0) * k / 4
        draw.text((x - 10, y1 + 6), f"{x_max * k / 4:.0f}", fill=(60, 60, 60))
    for colour, points in zip(COLOURS, series, strict=False):
        xy = [(x0 + (x1 - x0) * x / x_max, y1 - (y1 - y0) * (min(max(y, lo), hi) - lo) / (hi - lo)) for x, y in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--design", action="append", help="designs to draw, in order [default: the four]")
    args = parser.parse_args()
    names = [n for n in args.design or DESIGNS if (args.runs / n / "log.jsonl").is_file()]
    data = {n: curves(args.runs / n) for n in names}
    print("| design | checkpoint step | training CPU s | success | mIoU | loss (last full 25-step mean before it) |")
    print("|---|---|---|---|---|---|")
    for name, (loss, scored) in data.items():
        for step, cpu, success, miou in scored:
            before = [v for c, v in loss if c <= cpu]
            shown = f"{before[-1]:.4f}" if before else ""
            print(f"| {name} | {step} | {cpu:.0f} | {success:.1%} | {miou:.3f} | {shown} |")
    x_max = max([c for loss, scored in data.values() for c, _ in loss] + [1.0])
    losses = [v for loss, _ in data.values() for _, v in loss] or [0.0, 1.0]
    image = Image.new("RGB", (3 * PANEL_W, PANEL_H + 22 * len(names) + 8), "white")
    draw = ImageDraw.Draw(image)
    panel(draw, (0, 0), "success (32 held-out layouts) vs training CPU s",
          [[(c, s) for _, c, s, _ in scored] for _, scored in data.values()], x_max, (0.0, 1.0))
    panel(draw, (PANEL_W, 0), "mIoU vs training CPU s",
          [[(c, m) for _, c, _, m in scored] for _, scored in data.values()], x_max, (0.0, 1.0))
    panel(draw, (2 * PANEL_W, 0), "training loss (mean of 25 steps) vs CPU s",
          [loss for loss, _ in data.values()], x_max, (min(losses), max(losses)))
    for k, (colour, name) in enumerate(zip(COLOURS, names, strict=False)):
        y = PANEL_H + 4 + 22 * k
        draw.rectangle([MARGIN, y + 4, MARGIN + 20, y + 10], fill=colour)
        draw.text((MARGIN + 28, y), name, fill=(0, 0, 0))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Make the studio screenshots of docs/studio.md: `eligen studio --model shapes` driven in headless Chromium.

    python scripts/studio_screenshots.py

docs/images/studio-blank.png: the page as it opens. docs/images/studio-layout.png: two boxes and a brush stroke
drawn with the mouse, their token cells tinted, each outlined in its prompt's colour with its number.
docs/images/studio-result.png: after Generate, with the attention maps of the result. Needs /usr/bin/chromium and
playwright (the test extra), as the browser tests do.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from studio_browser import chromium, drag, open_page, serve, settle, wait_results  # noqa: E402 (after the path)

from eligen.pipeline.model_info import default_size  # noqa: E402

IMAGES = REPO / "docs" / "images"
K = default_size("shapes")[0] / 64  # the drawing below is in 64x64 units, scaled to the model's canvas


def at(x: float, y: float) -> tuple[float, float]:
    return x * K, y * K


def main() -> None:
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp) / "cwd"
        cwd.mkdir()
        with serve(cwd, "--model", "shapes") as served, chromium(Path(tmp) / "profile") as context:
            page = open_page(context, served.url, errors)
            page.set_viewport_size({"width": 1400, "height": 900})
            page.screenshot(path=IMAGES / "studio-blank.png")
            page.fill("#prompt", "a red circle and a blue square and a yellow triangle")
            drag(page, at(4, 4), at(26, 26))
            page.locator(".entity .prompt").nth(0).fill("a red circle")
            drag(page, at(38, 6), at(60, 28))
            page.locator(".entity .prompt").nth(1).fill("a blue square")
            page.click("[data-tool=brush]")
            page.fill("#brush-size", str(round(9 * K)))
            for start, end in [(at(22, 58), at(32, 40)), (at(32, 40), at(42, 58)), (at(22, 58), at(42, 58))]:
                drag(page, start, end)  # strokes go on painting the selected (third) entity
            page.locator(".entity .prompt").nth(2).fill("a yellow triangle")
            page.fill("#seeds", "0, 1")  # every other setting stays the model's default
            settle(page)
            page.screenshot(path=IMAGES / "studio-layout.png")
            page.click("#generate")
            wait_results(page, 2)
            page.locator("#gallery .result button:text-is('Attention')").first.click()
            page.wait_for_selector("#gallery .result img.attention-grid", timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=IMAGES / "studio-result.png", full_page=True)
    if errors:
        raise SystemExit(f"JavaScript errors: {errors}")
    print(f"wrote {', '.join(str(IMAGES / n) for n in ('studio-blank.png', 'studio-layout.png', 'studio-result.png'))}")


if __name__ == "__main__":
    main()

"""Screenshots of the example ComfyUI workflows (docs/comfyui.md), taken from ComfyUI's own web front end.

    python scripts/comfyui_screenshots.py --url http://127.0.0.1:8188

Each file of comfyui-workflows/ is dropped onto ComfyUI's page in headless Chromium, as a user drops it; the front
end lays the graph out, the view is fitted to it (the front end's own Fit View command, with the minimap hidden
meanwhile) and the page is saved as docs/images/comfyui-<name>.png. Not part of the tests.

What it needs:

* a running ComfyUI with this repository in its `custom_nodes/` (a clone or a link) and its web front end
  (`comfyui-frontend-package`). The images in docs/ were taken with ComfyUI 0.3.64 (commit a125cd84) and
  front end 1.27.10, in a virtual environment of its own, started with
  `python main.py --cpu --listen 127.0.0.1 --port 8188`. Keep ComfyUI's requirements out of eligen's environment:
  they include torchaudio, which can replace its torch. No model files are needed: the loaders show the file
  names the workflows give.
* Chromium at /usr/bin/chromium (Debian's `chromium`) and Playwright (eligen's `test` extra) in the Python that
  runs this script.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "comfyui-workflows"
IMAGES = REPO / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 120_000
MINIMAP = "Comfy.Minimap.Visible"  # a front-end setting, kept on the server: restored after each screenshot
VIEWPORT = {"width": 2400, "height": 1300}  # large enough that the fitted graph is drawn with its text

DROP = """([text, name]) => {
    const files = new DataTransfer();
    files.items.add(new File([text], name, {type: 'application/json'}));
    document.querySelector('#graph-canvas').dispatchEvent(
        new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true}));
}"""


def screenshot(browser: Any, url: str, workflow: Path, out: Path) -> None:
    """Drop `workflow` on a fresh ComfyUI page and save the fitted graph as `out`; an error if the front end shows
    another graph than the file's (a node type it does not know, a node left out)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas")
    page.wait_for_timeout(2000)  # the first-run template browser opens after the graph
    page.keyboard.press("Escape")
    text = workflow.read_text()
    page.evaluate(DROP, [text, workflow.name])
    expected = sorted(node["class_type"] for node in json.loads(text).values())
    page.wait_for_function("n => window.app.graph._nodes.length === n", arg=len(expected))
    shown = sorted(page.evaluate("() => window.app.graph._nodes.map(n => n.type)"))
    missing = page.evaluate("() => window.app.graph._nodes.filter(n => n.has_errors).map(n => n.type)")
    if shown != expected or missing:
        raise SystemExit(f"{workflow.name}: the front end shows {shown} ({missing} with errors), expected {expected}")
    settings = "window.app.extensionManager.setting"
    minimap = page.evaluate(f"() => {settings}.get('{MINIMAP}')")
    page.evaluate(f"() => {settings}.set('{MINIMAP}', false)")  # it would cover a corner of the graph
    try:
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        page.wait_for_timeout(1500)
        page.screenshot(path=out)
    finally:
        page.evaluate(f"v => {settings}.set('{MINIMAP}', v)", minimap)  # as the user had it
    page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="the running ComfyUI")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            for workflow in sorted(WORKFLOWS.glob("*.json")):
                out = IMAGES / f"comfyui-{workflow.stem.removeprefix('eligen-')}.png"
                screenshot(browser, args.url, workflow, out)
                written.append(str(out))
        finally:
            browser.close()
    print(f"wrote {', '.join(written)}")


if __name__ == "__main__":
    main()

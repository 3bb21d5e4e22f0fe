"""Helpers for the studio's browser tests and screenshots: start `eligen studio` as a subprocess and drive its page
in headless Chromium (Debian's `chromium`, through Playwright)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
START_TIMEOUT = 180  # s: importing torch and loading the model on a busy 2-core machine
PAGE_TIMEOUT_MS = 120_000  # Playwright waits: generous, for a 2-core CI machine shared with other work


# The studio's torch threads. A float sum's rounding depends on how it is split over threads, so a comparison of
# its images with the CLI's, bit for bit, runs the CLI with the same count (`tests/test_studio.py`, `_cli`).
STUDIO_THREADS = 1


def run_cli(*args: str) -> None:
    """`eligen ARGS` in this process on the studio's thread count (the same computation, so the same bits)."""
    import torch
    from typer.testing import CliRunner

    from eligen.main import app

    threads = torch.get_num_threads()
    torch.set_num_threads(STUDIO_THREADS)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output


@dataclass(frozen=True)
class Served:
    url: str
    cwd: Path  # the server's working folder (it must stay empty)
    log: Path
    process: subprocess.Popen


@contextmanager
def serve(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """`eligen studio ARGS --port 0` in `cwd` (with `env` added to the environment), until the context ends;
    yields its URL once it listens."""
    log = cwd.parent / f"{cwd.name}-studio.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(STUDIO_THREADS), **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "eligen", "studio", *args, "--port", "0"], cwd=cwd,
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (match := re.search(r"eligen studio: (http://\S+/)", log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the studio did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield Served(match[1], cwd, log, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A fresh headless Chromium profile (a Playwright persistent context) that accepts downloads. The tests wait
    on page conditions with Playwright's `wait_for_function`, which evaluates strings: the studio's
    Content-Security-Policy forbids that, so this context bypasses it (the page itself needs no eval)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True, accept_downloads=True,
            bypass_csp=True, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def open_page(context: Any, url: str, errors: list[str]) -> Any:
    """A new tab on the studio, ready; uncaught JavaScript errors are appended to `errors`."""
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return page


def drag(page: Any, start: tuple[float, float], end: tuple[float, float], steps: int = 6) -> None:
    """Press the mouse at `start`, move to `end`, release: both in canvas pixels of the layout."""
    box = page.locator("#canvas").bounding_box()
    width = page.evaluate("S.size[0]")
    scale = box["width"] / width
    page.mouse.move(box["x"] + start[0] * scale, box["y"] + start[1] * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * scale, box["y"] + end[1] * scale, steps=steps)
    page.mouse.up()


def click_at(page: Any, point: tuple[float, float]) -> None:
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / page.evaluate("S.size[0]")
    page.mouse.click(box["x"] + point[0] * scale, box["y"] + point[1] * scale)


def settle(page: Any) -> None:
    """Wait until the page's last layout check has come back."""
    page.wait_for_function("!S.checking")


def drop_files(page: Any, files: list[tuple[str, bytes, str]]) -> None:
    """Drop files (name, bytes, MIME type) onto the page, as a person dragging them from a file manager."""
    page.evaluate(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, {type: f.type}));
            }
            document.querySelector("main").dispatchEvent(
                new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [{"name": n, "data": base64.b64encode(d).decode(), "type": t} for n, d, t in files])


def wait_results(page: Any, count: int, timeout_ms: int = 120_000) -> None:
    page.wait_for_function(f"document.querySelectorAll('#gallery .result img').length >= {count}",
                           timeout=timeout_ms)
    page.wait_for_function("[...document.querySelectorAll('#gallery .result img')].every((i) => i.complete)")


def download(page: Any, selector: str, target: Path) -> Path:
    with page.expect_download() as info:
        page.click(selector)
    info.value.save_as(target)
    return target

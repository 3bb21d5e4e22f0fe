"""The studio's first minute in a real browser (headless Chromium against `eligen studio --model shapes`): what a new
person sees before and while drawing. Each test waits on page conditions, never on fixed delays."""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from studio_browser import CHROMIUM, chromium, drag, open_page, serve, settle, wait_results

from eligen.pipeline.model_info import default_size
from eligen.studio.limits import max_pixels

playwright = pytest.importorskip("playwright.sync_api", reason="the studio's browser tests need playwright")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="the studio's browser tests need /usr/bin/chromium")
SHAPES = Path(__file__).parent.parent / "layouts" / "shapes.yaml"
HUES = {"red": 0, "yellow": 60, "green": 120, "blue": 240, "purple": 280, "orange": 30}  # degrees


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serve(tmp_path_factory.mktemp("studio-cwd"), "--model", "shapes") as served:
        yield served


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx


@pytest.fixture
def js_errors() -> Iterator[list[str]]:
    errors: list[str] = []
    yield errors
    assert errors == [], f"uncaught JavaScript errors: {errors}"


@pytest.fixture
def page(context: Any, studio: Any, js_errors: list[str]) -> Iterator[Any]:
    tab = open_page(context, studio.url, js_errors)
    yield tab
    tab.close()


def _restore(page: Any, tmp_path: Path, layout: dict[str, Any]) -> None:
    """Open a layout YAML with the Open… button, as a person does."""
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(layout))
    page.set_input_files("#open-files", str(path))
    page.wait_for_function("document.querySelector('#notice').textContent === 'restored from scene.yaml'")
    settle(page)


def test_a_blank_page_says_nothing_and_asks_nothing_that_fails(context: Any, studio: Any, js_errors: list[str]
                                                               ) -> None:
    tab = context.new_page()
    failed: list[str] = []
    console: list[str] = []
    tab.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    tab.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda exc: js_errors.append(str(exc)))
    tab.goto(studio.url)
    tab.wait_for_selector("body[data-ready='1']")
    settle(tab)
    assert tab.inner_text("#notice") == "" and tab.inner_text("#settings-message") == ""
    assert tab.inner_text("#canvas-message") == "" and tab.inner_text("#status") == ""
    assert failed == [] and console == []
    tab.close()


def test_token_cells_show_as_soon_as_an_entity_has_a_region(page: Any) -> None:
    drag(page, (4, 4), (26, 26))  # no prompt typed anywhere yet
    settle(page)
    assert page.evaluate("S.check && S.check.cells[0].length") == 9  # 8 px tokens: x and y in 0..24
    assert page.inner_text("#settings-message") == "" and page.inner_text(".entity .message") == ""
    page.click("#generate")  # Generate still says what is missing
    page.wait_for_function("document.querySelector('#status').textContent.includes('expected a non-empty prompt')")
    assert page.locator("#gallery .result").count() == 0


def test_generate_mode_shows_no_load_image_row(page: Any) -> None:
    assert page.is_hidden("#inpaint-source") and page.is_hidden("#source-name")
    page.click("#mode-inpaint")
    assert page.is_visible("#inpaint-source")
    page.click("#mode-generate")
    assert page.is_hidden("#inpaint-source")


def test_open_restores_a_layout_and_says_so(page: Any, tmp_path: Path) -> None:
    _restore(page, tmp_path, yaml.safe_load(SHAPES.read_text()))  # the js_errors fixture fails on any exception
    assert page.locator("#entities .entity").count() == 3
    assert page.input_value("#prompt") == "a red circle and a blue square and a yellow triangle"


def test_one_button_says_generate(page: Any) -> None:
    assert page.locator("button:visible", has_text="Generate").count() == 1


def test_outline_colours_agree_with_the_colour_words_of_the_prompts(page: Any, tmp_path: Path) -> None:
    def hue(hex_colour: str) -> float:
        r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
        return colorsys.rgb_to_hsv(r, g, b)[0] * 360

    def named(hex_colour: str) -> str:  # the colour word whose hue is nearest
        return min(HUES, key=lambda w: min(abs(hue(hex_colour) - HUES[w]), 360 - abs(hue(hex_colour) - HUES[w])))

    _restore(page, tmp_path, yaml.safe_load(SHAPES.read_text()))
    colours = page.evaluate("S.docs.generate.entities.map(e => e.color)")
    assert [named(c) for c in colours] == ["red", "blue", "yellow"]
    drag(page, (30, 30), (40, 40))  # a new entity, then its prompt typed
    page.locator(".entity .prompt").nth(3).fill("a green square")
    assert named(page.evaluate("S.docs.generate.entities[3].color")) == "green"
    page.locator(".entity .prompt").nth(3).fill("a square")  # no colour word: none of the others' colours either
    assert named(page.evaluate("S.docs.generate.entities[3].color")) not in ("red", "blue", "yellow")


def test_regions_follow_the_canvas_when_its_size_changes(page: Any) -> None:
    drag(page, (4, 4), (26, 26))
    page.click("[data-tool=polygon]")
    for point in [(40, 40), (60, 40), (50, 60)]:
        page.mouse.click(*_screen(page, point))
    page.mouse.click(*_screen(page, (40, 40)))
    width = default_size("shapes")[0]  # the canvas the studio opens with
    page.fill("#width", "4096")
    page.dispatch_event("#width", "change")
    page.wait_for_function("S.size[0] === 4096")
    x = 4096 // width  # the regions stretch with the canvas
    assert page.evaluate("S.docs.generate.entities.map(e => e.box || e.polygon)") == [
        [4 * x, 4, 26 * x, 26], [[40 * x, 40], [60 * x, 40], [50 * x, 60]]]
    settle(page)  # the size is beyond the model's: said next to the setting
    assert f"expected a canvas of at most {max_pixels('shapes')} pixels" in page.inner_text("#settings-message")
    page.fill("#width", str(width))
    page.dispatch_event("#width", "change")
    page.wait_for_function(f"S.size[0] === {width}")
    assert page.evaluate("S.docs.generate.entities[0].box") == [4, 4, 26, 26]


def _screen(page: Any, point: tuple[float, float]) -> tuple[float, float]:
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / page.evaluate("S.size[0]")
    return box["x"] + point[0] * scale, box["y"] + point[1] * scale


def test_cancel_keeps_the_images_already_finished(page: Any, tmp_path: Path) -> None:
    seeds = list(range(16))
    _restore(page, tmp_path, {**yaml.safe_load(SHAPES.read_text()), "seed": seeds, "steps": 100})
    page.click("#generate")
    page.wait_for_function("/image [2-9] of 16/.test(document.querySelector('#status').textContent)")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status').textContent === 'generate: cancelled'")
    wait_results(page, 1)
    shown = sorted(int(t.split()[1]) for t in page.locator("#gallery .result .seed").all_inner_texts())
    assert 1 <= len(shown) < 16 and shown == seeds[:len(shown)]  # the finished ones, in order

"""`eligen studio` in a real browser: headless Chromium (Debian's package, driven by Playwright) against the studio
served on 127.0.0.1 with the built-in shapes model, started as a person starts it (`eligen studio --model shapes`).

What the page downloads is compared byte for byte with what `eligen generate` / `eligen inpaint` write.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from chat_server import serve as serve_mllm
from PIL import Image
from studio_browser import (
    CHROMIUM,
    chromium,
    click_at,
    download,
    drag,
    drop_files,
    open_page,
    run_cli,
    serve,
    settle,
    wait_results,
)

from eligen.pipeline.inpaint import dilate
from eligen.pipeline.layout import load_layout
from eligen.pipeline.model_info import declaration, default_size, scale_factor
from eligen.pipeline.outputs import read_png_metadata
from eligen.pipeline.regions import entity_masks, token_masks

playwright = pytest.importorskip("playwright.sync_api", reason="the studio's browser tests need playwright")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="the studio's browser tests need /usr/bin/chromium "
                                "(apt-get install chromium chromium-driver; .ci/run installs it)")
SHAPES = Path(__file__).parent.parent / "layouts" / "shapes.yaml"
WIDTH, HEIGHT = default_size("shapes")  # the canvas the studio opens with on the shapes model


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


def _yaml_file(data: dict[str, Any]) -> tuple[str, bytes, str]:
    return ("scene.yaml", yaml.safe_dump(data).encode(), "application/yaml")


def _entity_messages(page: Any) -> list[str]:
    return page.locator("#entities .entity .message").all_inner_texts()


def test_draw_two_boxes_and_a_brush_region_generate_and_the_cli_renders_the_same(
        page: Any, studio: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page.fill("#prompt", "a red circle and a blue square and a yellow triangle")
    drag(page, (4, 4), (26, 26))
    page.locator(".entity .prompt").nth(0).fill("a red circle")
    drag(page, (38, 6), (60, 28))
    page.locator(".entity .prompt").nth(1).fill("a blue square")
    page.click("[data-tool=brush]")
    page.fill("#brush-size", "8")
    drag(page, (20, 44), (44, 52))
    page.locator(".entity .prompt").nth(2).fill("a yellow triangle")
    page.fill("#seeds", "7")
    page.fill("#steps", "8")
    settle(page)
    assert page.locator("#entities .entity").count() == 3
    assert page.locator("#entities .entity .kind").all_inner_texts() == ["box", "box", "painted / mask"]
    cells = page.evaluate("S.check.cells")

    page.click("#generate")
    wait_results(page, 1)
    assert page.inner_text("#gallery .result .seed") == "seed 7"
    png = download(page, "#gallery .result a:text-is('PNG')", tmp_path / "studio.png")
    layout_file = download(page, "#gallery .result a:text-is('YAML')", tmp_path / "studio.yaml")

    layout = load_layout(layout_file)
    assert [e.prompt for e in layout.entities] == ["a red circle", "a blue square", "a yellow triangle"]
    assert [e.box for e in layout.entities[:2]] == [(4, 4, 26, 26), (38, 6, 60, 28)]
    assert layout.entities[2].mask is not None and layout.seed == 7 and layout.steps == 8
    masks = entity_masks(layout, tmp_path)
    assert masks[2][48, 30] and not masks[2][10, 10]  # the stroke, painted where it was drawn
    tokens = token_masks(masks, scale_factor("shapes"), layout)
    assert cells == [np.flatnonzero(t).tolist() for t in tokens]  # the cells shown are the ones the model gets

    monkeypatch.chdir(tmp_path)
    run_cli("generate", str(layout_file), "-o", "cli.png")
    assert (tmp_path / "cli.png").read_bytes() == png.read_bytes()  # same pixels, same embedded layout
    assert read_png_metadata(png)["layout"]["seed"] == 7


def test_save_yaml_renders_with_generate_to_the_studios_own_png(
        page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page.fill("#prompt", "a red circle and a blue square")
    drag(page, (6, 6), (28, 28))
    page.locator(".entity .prompt").nth(0).fill("a red circle")
    drag(page, (36, 30), (60, 58))
    page.locator(".entity .prompt").nth(1).fill("a blue square")
    page.fill("#seeds", "11")
    page.fill("#steps", "6")
    settle(page)
    page.click("#generate")
    wait_results(page, 1)
    png = download(page, "#gallery .result a:text-is('PNG')", tmp_path / "studio.png")
    saved = download(page, "#save-yaml", tmp_path / "layout.yaml")  # the canvas as it is, not the result's YAML

    layout = load_layout(saved)
    assert layout.seed == 11 and layout.steps == 6 and layout.model == "shapes"
    assert [e.box for e in layout.entities] == [(6, 6, 28, 28), (36, 30, 60, 58)]
    monkeypatch.chdir(tmp_path)
    run_cli("generate", str(saved), "-o", "cli.png")
    assert (tmp_path / "cli.png").read_bytes() == png.read_bytes()  # same threads: bit for bit


def test_inpaint_edits_come_back_from_an_inpaint_png_or_its_edits_yaml(
        page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    source = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(source)
    edits = {"model": "shapes", "prompt": "a red circle and a blue square", "seed": 5, "steps": 2, "dilate": 4,
             "feather": 2, "fusion": "paper", "entities": [{"prompt": "a red circle", "box": [8, 8, 32, 32]},
                                        {"prompt": "a blue square", "box": [44, 20, 76, 52]}]}
    (tmp_path / "edits.yaml").write_text(yaml.safe_dump(edits))
    monkeypatch.chdir(tmp_path)
    run_cli("inpaint", str(source), "edits.yaml", "-o", "edited.png")

    page.click("#mode-inpaint")
    page.set_input_files("#source-file", str(source))
    page.wait_for_function("document.querySelector('#source-name').textContent === 'photo.png (80x64)'")
    expected_boxes = [e["box"] for e in edits["entities"]]
    for name, data, kind in [("edited.png", (tmp_path / "edited.png").read_bytes(), "image/png"),
                             ("edits.yaml", (tmp_path / "edits.yaml").read_bytes(), "application/yaml")]:
        drop_files(page, [(name, data, kind)])
        page.wait_for_function(f"document.querySelector('#notice').textContent.startsWith('restored from {name}')")
        settle(page)
        assert page.evaluate("S.mode") == "inpaint"
        assert page.evaluate("S.docs.inpaint.entities.map(e => e.prompt)") == ["a red circle", "a blue square"]
        assert page.evaluate("S.docs.inpaint.entities.map(e => e.box)") == expected_boxes  # boxes stay boxes
        assert page.input_value("#fusion") == "paper" and page.input_value("#dilate") == "4"
        assert page.input_value("#feather") == "2" and page.input_value("#seeds") == "5"
        assert page.evaluate("S.check.cells.length") == 2
        page.click("#undo")  # back to the empty canvas for the next file
        assert page.locator("#entities .entity").count() == 0


def test_a_dropped_png_restores_its_layout(page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_cli("generate", str(SHAPES), "-o", "shapes.png", "--steps", "2")
    drop_files(page, [("shapes.png", (tmp_path / "shapes.png").read_bytes(), "image/png")])
    page.wait_for_function("document.querySelector('#notice').textContent.startsWith('restored from shapes.png')")
    settle(page)
    source = load_layout(SHAPES)
    assert page.locator("#entities .entity .prompt").evaluate_all("els => els.map(e => e.value)") == \
        [e.prompt for e in source.entities]
    boxes = page.evaluate("S.docs.generate.entities.map(e => e.box)")
    assert boxes == [list(e.box) for e in source.entities]
    assert page.input_value("#prompt") == source.prompt
    assert page.input_value("#seeds") == str(source.seed) and page.input_value("#steps") == "2"
    assert page.evaluate("S.check.cells.length") == 3

    page.click("#undo")  # back to the empty canvas
    assert page.locator("#entities .entity").count() == 0


def test_a_yaml_restores_with_the_mask_files_dropped_with_it_and_never_reads_server_paths(page: Any) -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 8:40] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    data = {"size": [64, 64], "prompt": "a red circle", "entities": [{"prompt": "a red circle", "mask": "m.png"}]}
    drop_files(page, [_yaml_file(data), ("m.png", buffer.getvalue(), "image/png")])
    page.wait_for_function("document.querySelector('#notice').textContent.startsWith('restored from scene.yaml')")
    assert page.locator("#entities .entity .kind").all_inner_texts() == ["painted / mask"]
    assert page.evaluate("S.docs.generate.entities[0].mask.reduce((a, b) => a + b, 0)") == 32 * 32

    outside = {**data, "entities": [{"prompt": "a red circle", "mask": "/etc/hostname"}]}
    drop_files(page, [_yaml_file(outside)])
    page.wait_for_function("document.querySelector('#notice').classList.contains('error')")
    assert "entities[0].mask: expected a file uploaded with the layout" in page.inner_text("#notice")


def test_bad_uploads_and_an_out_of_canvas_region_get_a_message_and_nothing_is_written(
        page: Any, studio: Any) -> None:
    drop_files(page, [("broken.png", b"\x89PNG\r\n\x1a\n not really a png", "image/png")])
    page.wait_for_function("document.querySelector('#notice').classList.contains('error')")
    assert page.inner_text("#notice").startswith("broken.png: (image): expected a readable PNG, JPEG or WebP image")
    drop_files(page, [("scene.yaml", b"prompt: [unclosed", "application/yaml")])
    page.wait_for_function("document.querySelector('#notice').textContent.startsWith('scene.yaml: (yaml)')")

    page.fill("#prompt", "a red circle")
    drag(page, (10, 10), (30, 30))
    page.locator(".entity .prompt").first.fill("a red circle")
    settle(page)
    assert _entity_messages(page) == [""]
    page.fill(".entity .x2", str(WIDTH + 6))  # past the canvas's right edge
    page.dispatch_event(".entity .x2", "change")
    page.wait_for_function("document.querySelector('.entity .message').textContent !== ''")
    expected = f"layout: entities[0].box: expected coordinates inside the canvas (0..{WIDTH} x 0..{HEIGHT} in units px)"
    assert _entity_messages(page)[0].startswith(expected)  # the CLI's message, next to the entity
    page.click("#generate")
    page.wait_for_function(f"document.querySelector('#status').textContent.startsWith({expected!r})")
    assert page.locator("#gallery .result").count() == 0

    page.fill("#steps", "0")
    page.wait_for_function("document.querySelector('#settings-message').textContent.includes('steps')")
    assert "layout: steps: input should be greater than 0" in page.inner_text("#settings-message")
    assert list(studio.cwd.iterdir()) == []  # the studio writes nothing on the server


def test_two_tabs_generating_at_once_both_get_their_images(context: Any, studio: Any, js_errors: list[str]) -> None:
    tabs = [open_page(context, studio.url, js_errors) for _ in range(2)]
    for i, tab in enumerate(tabs):
        layout = {**yaml.safe_load(SHAPES.read_text()), "seed": [10 + i, 20 + i], "steps": 20}
        drop_files(tab, [_yaml_file(layout)])
        tab.wait_for_function("document.querySelector('#notice').textContent.startsWith('restored')")
        settle(tab)
    for tab in tabs:
        tab.click("#generate")
    for i, tab in enumerate(tabs):
        wait_results(tab, 2)
        seeds = tab.locator("#gallery .result .seed").all_inner_texts()
        assert sorted(seeds) == [f"seed {10 + i}", f"seed {20 + i}"]
        tab.close()


def test_inpaint_keeps_every_pixel_outside_the_grown_regions_and_equals_therun_cli(
        page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    source = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(source)
    page.click("#mode-inpaint")
    page.set_input_files("#source-file", str(source))
    page.wait_for_function("document.querySelector('#source-name').textContent === 'photo.png (80x64)'")
    page.fill("#prompt", "a red circle")
    drag(page, (30, 20), (50, 40))
    page.locator(".entity .prompt").first.fill("a red circle")
    page.fill("#seeds", "4")
    page.fill("#steps", "6")
    settle(page)
    page.click("#generate")
    wait_results(page, 1)
    result = download(page, "#gallery .result a:text-is('PNG')", tmp_path / "studio-edited.png")
    edits = download(page, "#gallery .result a:text-is('YAML')", tmp_path / "edits.yaml")

    before, after = np.asarray(Image.open(source).convert("RGB")), np.asarray(Image.open(result).convert("RGB"))
    region = np.zeros((64, 80), dtype=bool)
    region[20:40, 30:50] = True
    grown = dilate(region, 8 + 8)  # dilate and feather defaults
    assert np.array_equal(before[~grown], after[~grown])
    assert not np.array_equal(before[region], after[region])

    monkeypatch.chdir(tmp_path)
    run_cli("inpaint", str(source), str(edits), "-o", "cli-edited.png")
    assert (tmp_path / "cli-edited.png").read_bytes() == result.read_bytes()


def test_attention_maps_are_zero_outside_each_region(page: Any) -> None:
    layout = {**yaml.safe_load(SHAPES.read_text()), "steps": 8}
    drop_files(page, [_yaml_file(layout)])
    page.wait_for_function("document.querySelector('#notice').textContent.startsWith('restored')")
    settle(page)
    cells = page.evaluate("S.check.cells")
    page.click("#generate")
    wait_results(page, 1)
    page.click("#gallery .result button:text-is('Attention')")
    page.wait_for_selector("#gallery .result img.attention-grid", timeout=60_000)
    grid_id = page.get_attribute("#gallery .result img.attention-grid", "data-id")
    maps = page.request.get(f"{page.url}api/results/{grid_id}.json").json()
    assert maps["block"] == "dual:-1" and maps["steps"] == [2, 4, 6, 8]
    for entity_cells, entity_maps in zip(cells, maps["maps"], strict=True):
        values = np.asarray(entity_maps).reshape(len(maps["steps"]), -1)
        outside = np.setdiff1d(np.arange(values.shape[1]), entity_cells)
        assert (values[:, outside] == 0).all()  # the regional mask forbids those keys: exactly zero
        assert (values[:, entity_cells] > 0).all()


def test_polygon_duplicate_reorder_delete_and_undo(page: Any) -> None:
    page.click("[data-tool=polygon]")
    for point in [(10, 10), (40, 12), (30, 40)]:
        click_at(page, point)
    click_at(page, (10, 10))  # back on the first corner closes it
    page.locator(".entity .prompt").first.fill("a green triangle")
    assert page.evaluate("S.docs.generate.entities[0].polygon") == [[10, 10], [40, 12], [30, 40]]
    page.click(".entity button:text-is('dup')")
    assert page.locator("#entities .entity").count() == 2
    page.locator(".entity .prompt").nth(1).fill("a red circle")
    page.locator(".entity").nth(1).locator("button:text-is('↑')").click()
    prompts = page.locator("#entities .entity .prompt").evaluate_all("els => els.map(e => e.value)")
    assert prompts == ["a red circle", "a green triangle"]

    page.click("[data-tool=select]")
    drag(page, (25, 20), (35, 30))  # move the selected polygon by (10, 10)
    assert page.evaluate("S.docs.generate.entities[0].polygon") == [[20, 20], [50, 22], [40, 50]]
    page.click("#undo")
    assert page.evaluate("S.docs.generate.entities[0].polygon") == [[10, 10], [40, 12], [30, 40]]
    page.locator(".entity").first.locator("button:text-is('✕')").click()
    assert page.locator("#entities .entity").count() == 1
    page.click("#undo")
    assert page.locator("#entities .entity").count() == 2


def test_a_colour_coded_png_makes_one_entity_per_colour(page: Any, tmp_path: Path) -> None:
    regions = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)  # the canvas's size: one PNG pixel, one canvas pixel
    regions[4:30, 4:30] = (255, 0, 0)
    regions[34:58, 34:58] = (0, 0, 255)
    path = tmp_path / "regions.png"
    Image.fromarray(regions).save(path)
    page.set_input_files("#colour-png", str(path))
    page.wait_for_function("document.querySelectorAll('#entities .entity').length === 2")
    sums = page.evaluate("S.docs.generate.entities.map(e => e.mask.reduce((a, b) => a + b, 0))")
    assert sums == [26 * 26, 24 * 24]  # most pixels first
    assert page.evaluate("S.docs.generate.entities.map(e => e.color)") == ["#ff0000", "#0000ff"]


def test_a_mask_png_becomes_an_entity_region(page: Any, tmp_path: Path) -> None:
    mask = np.zeros((HEIGHT // 2, WIDTH // 2), dtype=np.uint8)  # half the canvas size: scaled up with nearest sampling
    mask[2:10, 4:20] = 200
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    page.click("#add-entity")
    page.set_input_files(".entity input[type=file]", str(path))
    page.wait_for_function("S.docs.generate.entities[0].kind === 'mask'")
    pixels = np.asarray(page.evaluate("Array.from(S.docs.generate.entities[0].mask)")).reshape(HEIGHT, WIDTH)
    expected = np.zeros((HEIGHT, WIDTH), dtype=bool)
    expected[4:20, 8:40] = True
    assert np.array_equal(pixels.astype(bool), expected)


def test_the_page_shows_the_cli_defaults_and_the_model_words(page: Any) -> None:
    assert (page.input_value("#width"), page.input_value("#height")) == (str(WIDTH), str(HEIGHT))  # the model's size
    steps = str(declaration("shapes").steps)
    assert page.input_value("#steps") == steps and page.input_value("#cfg") == "3"  # the shapes model's, as the CLI
    assert page.input_value("#guidance") == "3.5" and page.input_value("#entity_tokens") == "max"
    assert "circle, square, triangle" in page.inner_text("#words")
    assert page.is_hidden("#chat-panel")  # no --mllm-url


def test_auth_and_the_model_cannot_be_changed(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with serve(cwd, "--model", "shapes", "--auth", "ann:secret") as served:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(served.url)
        assert refused.value.code == 401
        token = base64.b64encode(b"ann:secret").decode()
        body = {"mode": "generate", "layout": {**yaml.safe_load(SHAPES.read_text()), "steps": 2}}
        request = urllib.request.Request(f"{served.url}api/generate", json.dumps(body).encode(),
                                         {"Authorization": f"Basic {token}", "Content-Type": "application/json"})
        job = json.load(urllib.request.urlopen(request))
        assert job["state"] in ("queued", "running", "done")
        info = json.load(urllib.request.urlopen(urllib.request.Request(
            f"{served.url}api/info", headers={"Authorization": f"Basic {token}"})))
        assert info["model"] == "shapes"

        def post(path: str, data: bytes, length: int | None = None) -> tuple[int, dict[str, Any]]:
            headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
            if length is not None:
                headers["Content-Length"] = str(length)
            try:
                response = urllib.request.urlopen(urllib.request.Request(f"{served.url}{path}", data, headers))
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)
            return response.status, json.load(response)

        elsewhere = {**body["layout"], "model": "/somewhere/else"}
        status, answer = post("api/generate", json.dumps({"mode": "generate", "layout": elsewhere}).encode())
        assert status == 400 and answer["field"] == "model"
        local_lora = {**body["layout"], "loras": [{"path": str(SHAPES)}]}
        status, answer = post("api/check", json.dumps({"mode": "generate", "layout": local_lora}).encode())
        assert status == 400 and answer["field"] == "loras[0].path"
        assert answer["message"].startswith("layout: loras[0].path: expected a file the studio was started with "
                                            "(--lora)")
        status, answer = post("api/restore", b"{}", length=200 * 2**20)  # claims more than MAX_BODY: not read
        assert status == 413 and answer["message"] == "expected a request of at most 48 MiB"
    assert list(cwd.iterdir()) == []


def test_only_loopback_addresses_count_as_local() -> None:
    from eligen.studio.command import _is_local

    assert _is_local("127.0.0.1") and _is_local("::1") and _is_local("localhost") and _is_local("127.0.0.2")
    assert not _is_local("0.0.0.0") and not _is_local("192.168.1.5") and not _is_local("example.org")


def _answer(prompt: str, *entities: tuple[str, list[int]]) -> str:
    return json.dumps({"prompt": prompt, "entities": [{"prompt": p, "bbox_2d": b} for p, b in entities]})


def test_the_chat_panel_designs_and_refines_the_canvas(context: Any, tmp_path: Path, js_errors: list[str]) -> None:
    design = _answer("a red circle and a blue square", ("a red circle", [0, 0, 500, 500]),
                     ("a blue square", [500, 500, 1000, 1000]))
    refined = _answer("a red circle and a blue square", ("a red circle", [500, 0, 1000, 500]),
                      ("a blue square", [500, 500, 1000, 1000]))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with serve_mllm([design, refined]) as mllm, \
            serve(cwd, "--model", "shapes", "--mllm-url", mllm.url, "--mllm-family", "qwen2-vl",
                  env={"XDG_CONFIG_HOME": str(tmp_path / "config")}) as served:
        page = open_page(context, served.url, js_errors)
        assert page.is_visible("#chat-panel")
        page.fill("#chat-input", "a red circle and a blue square")
        page.click("#chat-form button")
        page.wait_for_function("S.docs.generate.entities.length === 2")
        half_w, half_h = WIDTH // 2, HEIGHT // 2  # the MLLM's 0-1000 boxes on the model's canvas
        assert page.evaluate("S.docs.generate.entities.map(e => e.box)") == [[0, 0, half_w, half_h],
                                                                             [half_w, half_h, WIDTH, HEIGHT]]
        page.fill("#chat-input", "move the circle to the right")
        page.click("#chat-form button")
        page.wait_for_function(f"S.docs.generate.entities[0].box[0] === {half_w}")
        assert page.input_value("#prompt") == "a red circle and a blue square"
        page.click("#undo")  # the person can step back from what the MLLM did
        assert page.evaluate("S.docs.generate.entities[0].box") == [0, 0, half_w, half_h]
        assert "eligen: a red circle and a blue square (2: a red circle, a blue square)" in page.inner_text("#chat-log")
        sent = mllm.chat_requests[1]["body"]["messages"][-1]["content"]
        assert "move the circle to the right" in json.dumps(sent)

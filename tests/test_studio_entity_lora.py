"""The studio's per-entity LoRA picker in a real browser (headless Chromium against `eligen studio --model shapes
--lora FILE`): a LoRA picked on one entity card reaches the generated image's layout and changes the image. Each step
waits on page conditions, never on fixed delays."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from diffusers import FluxTransformer2DModel
from PIL import Image
from safetensors.torch import save_file
from studio_browser import CHROMIUM, chromium, open_page, serve, settle, wait_results

from eligen.pipeline.entity_lora import token_stream
from eligen.pipeline.outputs import read_png_metadata
from eligen.pipeline.train.lora import block_linears

playwright = pytest.importorskip("playwright.sync_api", reason="the studio's browser tests need playwright")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="the studio's browser tests need /usr/bin/chromium")
ROOT = Path(__file__).parent.parent
SHAPES = ROOT / "layouts" / "shapes.yaml"
SHAPES_TRANSFORMER = ROOT / "pipeline" / "shapes" / "builtin-models" / "shapes" / "transformer"


def _random_lora(path: Path) -> Path:
    """A rank-4 LoRA of random factors on the shapes model's per-token Linears, large enough to change its image."""
    transformer = FluxTransformer2DModel.from_pretrained(SHAPES_TRANSFORMER)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name in block_linears(transformer):
        if token_stream(name) is None:
            continue
        linear = transformer.get_submodule(name)
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(4, linear.in_features, generator=generator) \
            / linear.in_features ** 0.5
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(linear.out_features, 4, generator=generator) * 0.5
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _random_lora(tmp_path_factory.mktemp("lora") / "style.safetensors")


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, lora: Path) -> Iterator[Any]:
    with serve(tmp_path_factory.mktemp("studio-cwd"), "--model", "shapes", "--lora", str(lora)) as served:
        yield served


@pytest.fixture
def page(tmp_path: Path, studio: Any) -> Iterator[Any]:
    errors: list[str] = []
    with chromium(tmp_path / "chromium-profile") as context:
        tab = open_page(context, studio.url, errors)
        yield tab
    assert errors == [], f"uncaught JavaScript errors: {errors}"


def _result_png(page: Any, studio: Any, index: int) -> tuple[dict[str, Any], np.ndarray]:
    """The gallery's result `index` (0: the newest) as the server sends it: its eligen metadata and its pixels."""
    src = page.locator("#gallery .result img").nth(index).get_attribute("src")
    with urllib.request.urlopen(studio.url.rstrip("/") + src, timeout=60) as response:
        data = response.read()
    metadata = read_png_metadata(io.BytesIO(data))
    assert metadata is not None, f"{src} carries no eligen metadata"
    return metadata, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def test_a_lora_picked_for_one_entity_is_in_the_result_and_changes_it(page: Any, studio: Any, lora: Path,
                                                                       tmp_path: Path) -> None:
    scene = tmp_path / "scene.yaml"
    scene.write_text(yaml.safe_dump({**yaml.safe_load(SHAPES.read_text()), "steps": 8}))
    page.set_input_files("#open-files", str(scene))
    page.wait_for_function("document.querySelector('#notice').textContent === 'restored from scene.yaml'")
    settle(page)
    pickers = page.locator("#entities .entity .entity-lora select")
    assert pickers.count() == 3  # one per entity card, each offering the studio's --lora
    assert pickers.nth(1).locator("option").all_inner_texts() == ["no entity LoRA", lora.name]

    page.click("#generate")  # first without the LoRA, for the comparison
    wait_results(page, 1)
    _, without = _result_png(page, studio, 0)

    pickers.nth(1).select_option(str(lora.resolve()))
    scale = page.locator("#entities .entity").nth(1).locator(".entity-lora input[type=number]")
    scale.fill("0.75")
    scale.dispatch_event("change")
    page.wait_for_function("S.docs.generate.entities[1].loras.length === 1")
    settle(page)
    assert page.inner_text("#settings-message") == "" and page.locator(".entity .message").all_inner_texts() == \
        ["", "", ""]
    page.click("#generate")
    wait_results(page, 2)
    metadata, with_lora = _result_png(page, studio, 0)
    entities = metadata["layout"]["entities"]
    assert entities[1]["loras"] == [{"path": str(lora.resolve()), "scale": 0.75}]
    assert "loras" not in entities[0] and "loras" not in entities[2]
    assert not metadata["layout"].get("loras")  # not a global LoRA
    assert not np.array_equal(without, with_lora)

    # picked away, then the result restored onto the canvas: the picker shows the LoRA and its scale again
    pickers.nth(1).select_option("")
    page.wait_for_function("S.docs.generate.entities[1].loras.length === 0")
    page.locator("#gallery .result").nth(0).get_by_role("button", name="Restore").click()
    page.wait_for_function("/^restored from .*\\.png$/.test(document.querySelector('#notice').textContent)")
    settle(page)
    card = page.locator("#entities .entity").nth(1)
    assert card.locator(".entity-lora select").input_value() == str(lora.resolve())
    assert float(card.locator(".entity-lora input[type=number]").input_value()) == 0.75
    assert page.evaluate("S.docs.generate.entities.map((e) => e.loras.length)") == [0, 1, 0]

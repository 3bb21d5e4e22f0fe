"""Shared fixtures: a tiny random-weight FLUX folder built offline, loaded like a real model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eligen.pipeline.shapes.tiny_flux import build_tiny_flux


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test (tiny models run faster on one thread than fighting for two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FLUX folder in the diffusers layout (T5 length 32, VAE factor 8)."""
    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model: Path):
    """The tiny model loaded through EligenPipeline.from_pretrained on the CPU in float32."""
    from eligen.pipeline.generate import EligenPipeline

    return EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_qwen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen-Image folder in the diffusers layout (VAE factor 8, tokenizer made in memory)."""
    from eligen.pipeline.shapes.tiny_qwen_image import build_tiny_qwen_image

    return build_tiny_qwen_image(tmp_path_factory.mktemp("models") / "tiny-qwen-image", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_pipe(tiny_qwen_model: Path):
    """The tiny Qwen-Image model loaded through EligenPipeline.from_pretrained on the CPU in float32."""
    from eligen.pipeline.generate import EligenPipeline

    return EligenPipeline.from_pretrained(str(tiny_qwen_model), device="cpu", dtype="fp32")

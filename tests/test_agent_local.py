"""The local backend on a tiny random Qwen2-VL built offline, through the real processor, qwen-vl-utils and
`generate` (its output scripted by a logits processor, since random weights say nothing useful)."""

from __future__ import annotations

from pathlib import Path

import pytest
import qwen_vl_utils  # noqa: F401  (the test extra installs it; a missing package must fail, not skip)
import torch
from PIL import Image
from tiny_qwen2_vl import build_tiny_qwen2_vl
from transformers import LogitsProcessor, LogitsProcessorList

from eligen.agent.local_backend import LocalBackend
from eligen.agent.plan import design_layout, plan_edits


class Scripted(LogitsProcessor):
    """Forces the tokens of a text, then the end of the turn, in every `generate` call."""

    def __init__(self, token_ids: list[int], eos: int) -> None:
        self.token_ids = [*token_ids, eos]
        self.start = self.last = -1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if length != self.last + 1:  # a new generation
            self.start = length
        self.last = length
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_ids[min(length - self.start, len(self.token_ids) - 1)]] = 0
        return forced


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("mllm") / "tiny-qwen2-vl")


def _scripted_backend(folder: Path, text: str) -> LocalBackend:
    backend = LocalBackend(str(folder), "qwen2-vl", "cpu")
    tokenizer = backend.processor.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    backend.generate_kwargs = {"logits_processor": LogitsProcessorList([Scripted(ids, eos)])}
    return backend


def test_edit_with_an_image_through_processor_and_generate(tiny_qwen: Path) -> None:
    answer = "<|object_ref_start|>a red car<|object_ref_end|><|box_start|>(100,500),(600,900)<|box_end|>"
    backend = _scripted_backend(tiny_qwen, answer)
    assert backend.max_pixels == 28 * 28 * 1280  # read from the processor's own config
    image = Image.new("RGB", (300, 200), (90, 120, 60))
    plan = plan_edits(backend, "qwen2-vl", "put a red car on the lawn", image)
    # The special box tokens survive decoding; 0..1000 map to the image's pixels.
    assert [(e.prompt, e.box) for e in plan.layout.entities] == [("a red car", (30, 100, 180, 180))]
    assert plan.layout.size == (300, 200)


def test_design_json_answer(tiny_qwen: Path) -> None:
    answer = '{"prompt":"a cat","entities":[{"prompt":"cat","bbox_2d":[0,0,500,500]}]}'
    plan = design_layout(_scripted_backend(tiny_qwen, answer), "qwen2-vl", "a cat", (256, 256))
    assert [(e.prompt, e.box) for e in plan.layout.entities] == [("cat", (0, 0, 128, 128))]

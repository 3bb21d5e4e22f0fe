"""Model loading options: device and dtype choice, the full-size-on-CPU guard, quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eligen.pipeline.devices import pick_dtype
from eligen.pipeline.families.diffusers_family import transformer_config
from eligen.pipeline.families.flux.load import check_device
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.model_info import ModelLoadError

FLUX_DEV = {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24, "attention_head_dim": 128}


def test_full_size_model_on_cpu_needs_an_explicit_device() -> None:
    with pytest.raises(ModelLoadError, match=r"about 12B parameters.*about 48 GB.*--device cpu"):
        check_device("black-forest-labs/FLUX.1-dev", FLUX_DEV, torch.device("cpu"), explicit=False)
    check_device("black-forest-labs/FLUX.1-dev", FLUX_DEV, torch.device("cpu"), explicit=True)
    check_device("tiny", {**FLUX_DEV, "num_layers": 2}, torch.device("cpu"), explicit=False)


def test_default_dtypes() -> None:
    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ModelLoadError, match="dtype"):
        pick_dtype("int3", torch.device("cpu"))


def test_folder_without_transformer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a diffusers FLUX folder"):
        transformer_config(str(tmp_path), "FLUX")


def test_offload_needs_a_gpu(tiny_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="the device is the CPU"):
        EligenPipeline.from_pretrained(str(tiny_model), device="cpu", offload="model")


def test_int8_quantised_transformer_runs_close_to_full_precision(tiny_model: Path, tiny_pipe: EligenPipeline) -> None:
    from torchao.utils import TorchAOBaseTensor

    quantised = EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32", quantize="int8")
    weight = quantised.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, TorchAOBaseTensor)
    layout = parse_layout({"size": [64, 64], "steps": 2, "seed": 0, "prompt": "a boat",
                           "entities": [{"prompt": "a red boat", "box": [0, 0, 32, 64]}]})
    a = np.asarray(quantised.generate(layout, [0])[0]).astype(int)
    b = np.asarray(tiny_pipe.generate(layout, [0])[0]).astype(int)
    assert np.abs(a - b).mean() < 8  # int8 weights change pixels a little, not the picture

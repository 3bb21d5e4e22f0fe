"""Training on the tiny model: the loss, the batch mask, checkpoints and exact resume, LoRA files, cache, full
fine-tuning and validation grids. Runs in-process on one CPU thread (fast and deterministic on busy cores)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from training_tolerance import trained_alike

from eligen.pipeline.conditioning import conditioning
from eligen.pipeline.families.flux.lora import load_lora
from eligen.pipeline.families.flux.transformer import image_ids, predict
from eligen.pipeline.generate import EligenPipeline
from eligen.pipeline.lora import apply_loras
from eligen.pipeline.train.cache import CacheError
from eligen.pipeline.train.config import TrainConfig
from eligen.pipeline.train.data import TrainingSet, collate
from eligen.pipeline.train.example import write_example_dataset
from eligen.pipeline.train.loop import Trainer, TrainError, batch_conditioning, lr_factor, train
from eligen.pipeline.train.loss import TRAIN_TIMESTEPS, draw_timestep, reference_timesteps
from eligen.pipeline.train.state import STATE

EVAL_EPOCH = 10_000  # draws no training step uses


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two fighting cores


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("train") / "data", 8)


def _config(dataset: Path, tiny_model: Path, output: Path, **options: Any) -> TrainConfig:
    defaults = {"data": dataset, "output": output, "model": str(tiny_model), "steps": 4, "rank": 4, "lr": 1e-3,
                "resolution": 64, "bucket_step": 16, "batch_size": 2, "num_workers": 0, "save_every": 0,
                "gradient_checkpointing": False}
    return TrainConfig(**{**defaults, **options})


def _lora(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def _eval_loss(trainer: Trainer) -> float:
    """The mean loss over every training sample with fixed draws (not those of any training step)."""
    data = TrainingSet(trainer.samples)
    with torch.no_grad():
        losses = [trainer.loss(trainer.transformer, collate([data[i]]), EVAL_EPOCH).item() for i in range(len(data))]
    return sum(losses) / len(losses)


def test_reference_timesteps_match_diffsynth() -> None:
    from diffsynth.diffusion.flow_match import FlowMatchScheduler

    scheduler = FlowMatchScheduler("FLUX.1")
    scheduler.set_timesteps(TRAIN_TIMESTEPS, training=True)
    sigmas, weights = reference_timesteps()
    assert torch.equal(sigmas, scheduler.sigmas)
    assert torch.allclose(weights, scheduler.linear_timesteps_weights, rtol=0, atol=1e-6)
    assert weights.mean().item() == pytest.approx(1.0)


def test_shifted_logit_normal_timesteps_are_the_sampler_shift_of_the_same_draws() -> None:
    for seed in range(20):
        t, w = draw_timestep("logit-normal", torch.Generator().manual_seed(seed))
        shifted, w3 = draw_timestep("logit-normal", torch.Generator().manual_seed(seed), shift=3.0)
        assert w == w3 == 1.0
        assert shifted == pytest.approx(3 * t / (1 + 2 * t), rel=1e-12) and shifted >= t  # towards high noise
    draws = [draw_timestep("logit-normal", torch.Generator().manual_seed(s), shift=3.0)[0] for s in range(2000)]
    # the median of sigmoid(N(0, 1)) is 0.5, shifted by 3 to 0.75; 2,000 draws put the sample median within 0.03
    assert sorted(draws)[1000] == pytest.approx(0.75, abs=0.03)


class _Velocity(torch.nn.Module):
    """Stands in for the transformer: records its inputs and predicts a constant velocity."""

    def forward(self, **inputs: Any) -> tuple[torch.Tensor]:
        self.inputs = inputs
        return (torch.full_like(inputs["hidden_states"], 0.5),)


def test_rectified_flow_loss_is_the_equation() -> None:
    from eligen.pipeline.conditioning import Conditioning
    from eligen.pipeline.train.loss import rectified_flow_loss

    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, generator=generator), torch.randn(2, 4, 8, generator=generator)
    t, weight = torch.tensor([0.25, 0.9]), torch.tensor([1.5, 0.5])
    cond = Conditioning(torch.zeros(2, 3, 8), torch.zeros(2, 8), torch.zeros(3, 3), None)
    model = _Velocity()
    def velocity(x: torch.Tensor, timestep: torch.Tensor, c: Conditioning) -> torch.Tensor:
        return predict(model, x, timestep, c, torch.zeros(4, 3), None)

    loss = rectified_flow_loss(velocity, x0, noise, t, weight, cond)
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * noise
    assert torch.allclose(model.inputs["hidden_states"], x_t)
    assert torch.allclose(model.inputs["timestep"], t)
    expected = (weight * ((0.5 - (noise - x0)) ** 2).mean(dim=(1, 2))).mean()
    assert torch.allclose(loss, expected)


def test_batch_padding_leaves_each_sample_unchanged(tiny_pipe: EligenPipeline) -> None:
    transformer = tiny_pipe.transformer
    encode = tiny_pipe.prompt_encoder(32)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 64, generator=generator)
    ids = image_ids(8, 8, x.device, x.dtype)
    region = torch.zeros(1, 16, dtype=torch.bool)
    region[0, :6] = True
    t = torch.tensor([500.0, 500.0])

    def velocity(cond: Any, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return predict(transformer, tokens, t[: tokens.shape[0]], cond, ids, torch.ones(tokens.shape[0]))

    alone = velocity(conditioning(encode, "a red box", ["a red box"], region), x[:1])
    plain = velocity(conditioning(encode, "a blue box", [], None), x[1:])
    batch = batch_conditioning(encode, ["a red box", "a blue box"], [["a red box"], []],
                               [region, torch.zeros(0, 16, dtype=torch.bool)])
    assert batch.attention_mask is not None and batch.attention_mask.shape[0] == 2
    both = velocity(batch, x)
    assert torch.allclose(both[:1], alone, atol=1e-5) and torch.allclose(both[1:], plain, atol=1e-5)
    padded = batch_conditioning(encode, ["a red box"], [["a red box", "", ""]],
                                [torch.cat([region, torch.zeros(2, 16, dtype=torch.bool)])])
    assert torch.allclose(velocity(padded, x[:1]), alone, atol=1e-5)
    assert batch_conditioning(encode, ["a", "b"], [[], []], [region[:0], region[:0]]).attention_mask is None


def test_loss_goes_down(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(dataset, tiny_model, tmp_path / "run", steps=20, lr=1e-2))
    before = _eval_loss(trainer)
    result = trainer.run()
    after = _eval_loss(trainer)
    assert result.step == 20 and after < 0.9 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 21))


def test_learning_rate_schedules(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    assert [lr_factor(s, 2, 10, cosine=False) for s in (0, 1, 5, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0, 4, cosine=True) == 1.0 and lr_factor(2, 0, 4, cosine=True) == pytest.approx(0.5)
    assert lr_factor(4, 0, 4, cosine=True) == pytest.approx(0.0, abs=1e-12)
    train(_config(dataset, tiny_model, tmp_path / "run", steps=4, lr=1e-3, warmup_steps=2, lr_schedule="cosine"))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # each line reports the rate its step used: warmup 1/2, then cosine over 4 steps at steps 1..3
    half = math.cos(math.pi / 4)
    expected = [0.5, 0.5 * (1 + half), 0.5, 0.5 * (1 - half)]
    assert [entry["lr"] for entry in log] == pytest.approx([1e-3 * e for e in expected])


def test_resume_continues_exactly(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    options = {"steps": 6, "save_every": 3, "batch_size": 1, "grad_accum": 2, "entity_dropout": 0.3,
               "warmup_steps": 2, "max_grad_norm": 1.0}
    whole = train(_config(dataset, tiny_model, tmp_path / "whole", **options))
    train(_config(dataset, tiny_model, tmp_path / "parts", **{**options, "steps": 3}))
    resumed = train(_config(dataset, tiny_model, tmp_path / "parts", **options, resume="latest"))
    a, b = _lora(tmp_path / "whole" / "lora.safetensors"), _lora(tmp_path / "parts" / "lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.loss == whole.loss and resumed.step == 6
    state = sorted((tmp_path / "parts" / "checkpoints").iterdir())[-1] / STATE  # as written before lr_schedule
    data = json.loads(state.read_text())
    del data["run"]["lr_schedule"]
    state.write_text(json.dumps(data))
    assert train(_config(dataset, tiny_model, tmp_path / "parts", **{**options, "steps": 7}, resume="latest")).step == 7
    with pytest.raises(TrainError, match=r"other settings.*rank"):
        train(_config(dataset, tiny_model, tmp_path / "parts", **{**options, "rank": 8}, resume="latest"))
    with pytest.raises(TrainError, match="already holds a run"):
        train(_config(dataset, tiny_model, tmp_path / "parts", **options))


def test_stop_at_pauses_a_cosine_run_that_resumes_exactly(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    options = {"steps": 6, "save_every": 0, "batch_size": 1, "lr": 1e-3, "warmup_steps": 1, "lr_schedule": "cosine"}
    whole = train(_config(dataset, tiny_model, tmp_path / "whole", **options))
    paused = train(_config(dataset, tiny_model, tmp_path / "parts", **options, stop_at=4))
    assert paused.step == 4 and paused.outputs == [tmp_path / "parts" / "checkpoints" / "step-000004"]
    assert not (tmp_path / "parts" / "lora.safetensors").exists()
    with pytest.raises(TrainError, match="already at step 4"):
        train(_config(dataset, tiny_model, tmp_path / "parts", **options, stop_at=4, resume="latest"))
    resumed = train(_config(dataset, tiny_model, tmp_path / "parts", **options, resume="latest"))
    a, b = _lora(tmp_path / "whole" / "lora.safetensors"), _lora(tmp_path / "parts" / "lora.safetensors")
    assert resumed.step == 6 and resumed.loss == whole.loss
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_layout_pruning_and_validation(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    layout = {"size": [64, 48], "steps": 2, "seed": 3, "prompt": "a green box",
              "entities": [{"prompt": "a green box", "box": [8, 8, 40, 40]}]}
    (layouts / "one.yaml").write_text(json.dumps(layout), encoding="utf-8")
    out = tmp_path / "run"
    train(_config(dataset, tiny_model, out, steps=6, save_every=2, keep_checkpoints=2, validate_every=3,
                  validation=layouts, holdout=1))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    checkpoint = out / "checkpoints" / "step-000006"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["lora.safetensors", "optimizer.pt", "rng-0.safetensors",
                                                             "scheduler.json", "state.json"]
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert optimizer["param_groups"][0]["lr"] == 1e-3 and len(optimizer["state"]) == 80
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == 6 and state["run"]["samples"] == 7 and state["run"]["holdout"] == 1
    assert state["epoch"] * 3 + state["batch"] == 6  # one batch a step; 7 samples make 3 batches of 2 an epoch
    assert _lora(checkpoint / "lora.safetensors").keys() == _lora(out / "lora.safetensors").keys()
    grids = sorted(p.name for p in (out / "validation").iterdir())
    assert grids == ["step-000003.png", "step-000006.png"]
    from PIL import Image

    assert Image.open(out / "validation" / "step-000006.png").size == (1024, 512)  # two tiles, shown at 512 px


def test_lora_file_loads_with_its_alpha(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(dataset, tiny_model, tmp_path / "run", steps=3, lr=1e-2, rank=4, alpha=8,
                              export="kohya"))
    trainer.run()
    path = tmp_path / "run" / "lora.safetensors"
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys and len(keys) == 2 * 40
    assert metadata["transformer.lora_alpha"] == 8 and metadata["transformer.r"] == 4
    deltas = load_lora(path, trainer.transformer.config)
    assert {d.scale for d in deltas} == {2.0} and len(deltas) == 40

    fresh = EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32")
    apply_loras(fresh.transformer, [(deltas, 1.0)])
    encode = fresh.prompt_encoder(32)
    region = torch.zeros(1, 16, dtype=torch.bool)
    region[0, 5:11] = True
    cond = conditioning(encode, "a red box", ["a red box"], region)
    x = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(2))
    ids, t, g = image_ids(8, 8, x.device, x.dtype), torch.tensor([700.0]), torch.ones(1)
    with torch.no_grad():
        ours = predict(fresh.transformer, x, t, cond, ids, g)
        trained = predict(trainer.transformer, x, t, cond, ids, g)
        base = predict(EligenPipeline.from_pretrained(str(tiny_model), device="cpu", dtype="fp32").transformer,
                       x, t, cond, ids, g)
    assert torch.allclose(ours, trained, atol=1e-5) and not torch.allclose(ours, base, atol=1e-3)

    kohya = {d.module: d for d in load_lora(tmp_path / "run" / "lora_kohya.safetensors", trainer.transformer.config)}
    for delta in deltas:
        other = kohya[delta.module]
        assert torch.allclose(other.scale * other.up @ other.down, delta.scale * delta.up @ delta.down, atol=1e-6)


def test_cache_trains_the_same_weights(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    plain = train(_config(dataset, tiny_model, tmp_path / "plain", steps=3))
    cached = train(_config(dataset, tiny_model, tmp_path / "cached", steps=3, cache=True))
    a, b = _lora(tmp_path / "plain" / "lora.safetensors"), _lora(tmp_path / "cached" / "lora.safetensors")
    trained_alike(a, b, lr=1e-3, steps=3)
    assert cached.loss == pytest.approx(plain.loss)
    cache = tmp_path / "cached" / "cache"
    assert len(list((cache / "latents").iterdir())) == 8 and (cache / "manifest.json").is_file()
    with pytest.raises(CacheError, match="resolution"):
        train(_config(dataset, tiny_model, tmp_path / "other", steps=1, cache=True, cache_dir=cache, resolution=48))


def test_gradient_checkpointing_gives_the_same_weights(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    train(_config(dataset, tiny_model, tmp_path / "off", steps=2))
    train(_config(dataset, tiny_model, tmp_path / "on", steps=2, gradient_checkpointing=True))
    a, b = _lora(tmp_path / "off" / "lora.safetensors"), _lora(tmp_path / "on" / "lora.safetensors")
    trained_alike(a, b, lr=1e-3, steps=2)


def test_full_fine_tune_writes_a_diffusers_transformer(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    out = tmp_path / "full"
    train(_config(dataset, tiny_model, out, steps=2, full=True, lr=1e-3, save_every=1, keep_checkpoints=1))
    assert (out / "checkpoints" / "step-000002" / "transformer.safetensors").is_file()
    assert not (out / "lora.safetensors").exists()
    trained = FluxTransformer2DModel.from_pretrained(out / "transformer")
    original = FluxTransformer2DModel.from_pretrained(tiny_model / "transformer")
    changed = [name for name, p in trained.state_dict().items() if not torch.equal(p, original.state_dict()[name])]
    assert any(n.startswith("x_embedder") for n in changed) and any(n.startswith("single_") for n in changed)
    resumed = train(_config(dataset, tiny_model, out, steps=3, full=True, lr=1e-3, save_every=1, keep_checkpoints=1,
                            resume="latest"))
    assert resumed.step == 3


def test_validation_needs_layouts(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--validate-every needs"):
        Trainer(_config(dataset, tiny_model, tmp_path / "run", validate_every=2))
    with pytest.raises(TrainError, match="no full batch"):
        Trainer(_config(dataset, tiny_model, tmp_path / "run", batch_size=16))


def test_buckets_of_several_shapes_train_in_batches(tiny_model: Path, tmp_path: Path) -> None:
    data = write_example_dataset(tmp_path / "data", 4, (64, 64), seed=1)
    wide = write_example_dataset(data / "wide", 4, (128, 64), seed=2)
    lines = [json.loads(line) for line in (wide / "metadata.jsonl").read_text().splitlines()]
    extra = "".join(json.dumps({**line, "image": f"wide/{line['image']}"}) + "\n" for line in lines)
    with (data / "metadata.jsonl").open("a") as metadata:
        metadata.write(extra)
    trainer = Trainer(_config(data, tiny_model, tmp_path / "run", steps=4, batch_size=2))
    assert trainer.dataset.buckets() == {(64, 64): 4, (96, 48): 4}
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(entry["loss"] > 0 for entry in log)


def test_qwen_image_reference_timesteps_match_diffsynth() -> None:
    """`--timesteps reference` on a Qwen-Image model draws from the reference's Qwen-Image trainer's sigmas and weights
    (its own schedule, not FLUX's shift 3)."""
    from diffsynth.diffusion.flow_match import FlowMatchScheduler

    from eligen.pipeline.families.defaults import QWEN_IMAGE

    scheduler = FlowMatchScheduler("Qwen-Image")
    scheduler.set_timesteps(TRAIN_TIMESTEPS, training=True)
    sigmas, weights = reference_timesteps(QWEN_IMAGE)
    assert torch.equal(sigmas, scheduler.sigmas)
    assert torch.allclose(weights, scheduler.linear_timesteps_weights, rtol=0, atol=1e-6)
    flux_sigmas, _ = reference_timesteps()
    assert (sigmas - flux_sigmas).abs().max() > 0.05  # the two families' draws differ


def test_caption_dropout_trains_the_empty_prompt_without_entities(dataset: Path, tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    """A sample drawn for caption dropout is trained exactly as the empty prompt with its entities dropped (the
    same noise and timestep, which are drawn before the caption dropout's draw)."""
    captionless = Trainer(_config(dataset, tiny_model, tmp_path / "a", caption_dropout=1.0))
    entityless = Trainer(_config(dataset, tiny_model, tmp_path / "b", entity_dropout=1.0))
    batch = collate([TrainingSet(captionless.samples)[i] for i in range(2)])
    blank = {**batch, "prompt": [""] * len(batch["prompt"])}
    with torch.no_grad():
        dropped = captionless.loss(captionless.transformer, batch, 0).item()
        assert dropped == entityless.loss(entityless.transformer, blank, 0).item()
        assert dropped != entityless.loss(entityless.transformer, batch, 0).item()

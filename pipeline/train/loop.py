"""`eligen train`: EliGen training of a FLUX transformer (paper §3.4) on Hugging Face accelerate.

A step, as in minRF: for each sample draw t and noise, form x_t = (1 - t) x0 + t noise and regress the velocity
noise - x0 under the sample's regional attention mask, built by the module inference uses
(`encode.conditioning` -> `regional_attention.regional_attention_mask`), with embedded guidance 1 and no CFG, as the
reference trains. A LoRA on every block linear (or, with `full`, the whole transformer) learns; AdamW steps.

Every random draw of a sample comes from a seed made of (run seed, epoch, sample index), and the data order from
(run seed, epoch); with accelerate's `split_batches` each process takes a slice of every global batch. So a run
gives the same weights on one process or several (up to floating-point summation order) and after a resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType
from accelerate.utils import GradientAccumulationPlugin, set_seed
from safetensors.torch import load_file

from .. import model_info
from ..conditioning import Conditioning, PromptTable, batched, conditioning
from ..dataset import Dataset, read_dataset
from ..devices import pick_dtype
from ..families.base import PromptEncoder
from ..families.loading import load_family
from ..generate import EligenPipeline
from ..outputs import save_png
from ..render import Render
from ..sampler import get_noise, pack
from .cache import TrainCache, build_cache
from .config import TrainConfig
from .data import BucketBatchSampler, TrainingSet, collate, sample_seed
from .lora import EXPORTS, add_lora, load_lora_into, save_lora
from .loss import draw_timestep, rectified_flow_loss
from .state import (
    Position,
    commit,
    final_dir,
    find_checkpoint,
    load_optimizer,
    load_rng,
    load_scheduler,
    prune,
    read_state,
    save_optimizer,
    save_rng,
    save_scheduler,
    save_tensors,
    staging_dir,
    write_state,
)
from .validation import prepare_cases, read_validation, render_grid

TRAINING_GUIDANCE = 1.0  # FLUX embedded guidance during training, as the reference trains
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TrainError(RuntimeError):
    """A run that cannot start or continue as asked; the message says why."""


@dataclass(frozen=True)
class StepReport:
    """Progress after one optimizer step (loss averaged over the step's micro-batches and processes)."""

    step: int
    total: int
    loss: float
    lr: float
    samples_per_s: float


class Reporter(Protocol):
    """Where progress goes (the command line's progress bar; nothing on processes other than the main one)."""

    def start(self, total: int, done: int) -> None: ...

    def step(self, report: StepReport) -> None: ...

    def note(self, message: str) -> None: ...


class _Silent:
    def start(self, total: int, done: int) -> None:
        pass

    def step(self, report: StepReport) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class TrainResult:
    """What a finished run wrote."""

    step: int
    loss: float | None
    outputs: list[Path]


def batch_conditioning(
    encode: PromptEncoder | PromptTable, prompts: Sequence[str], entity_prompts: Sequence[Sequence[str]],
    regions: Sequence[torch.Tensor],
) -> Conditioning:
    """Per-sample conditionings (`encode.conditioning`) stacked into one batch.

    Samples with fewer entities than the batch's most get slots holding the empty prompt with an empty region: no
    other token attends to them and they attend to nothing else, so each sample's image tokens get exactly its own
    unpadded attention. Texts of different lengths (Qwen-Image's unpadded groups) are padded with masked tokens
    (`conditioning.batched`). Without any entity in the batch and texts of one length there is no mask (plain
    model).
    """
    k = max(len(names) for names in entity_prompts)
    singles = []
    for prompt, names, tokens in zip(prompts, entity_prompts, regions, strict=True):
        pad = k - len(names)
        padded = torch.cat([tokens.bool(), tokens.new_zeros(pad, tokens.shape[1], dtype=torch.bool)]) if k else None
        singles.append(conditioning(encode, prompt, [*names, *[""] * pad], padded))
    return batched(singles, regions[0].shape[1])


def _accelerator(config: TrainConfig) -> Accelerator:
    cpu = config.device == "cpu" or not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision or ("no" if cpu else "bf16"),
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum,
                                                                sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


def _run_identity(config: TrainConfig, dataset: Dataset, train_samples: int, batches: int, world: int,
                  max_sequence_length: int, family_rank: int) -> dict[str, Any]:
    """The settings a checkpoint must share with the run resuming it."""
    return {
        "model": config.model, "data": str(dataset.metadata.resolve()), "samples": train_samples,
        "batches_per_epoch": batches, "global_batch": config.batch_size * world, "grad_accum": config.grad_accum,
        "full": config.full, "rank": config.lora_rank(family_rank),
        "alpha": config.lora_alpha(family_rank), "lr": config.lr,
        "weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps, "lr_schedule": config.lr_schedule,
        "max_grad_norm": config.max_grad_norm, "resolution": config.resolution, "bucket_step": config.bucket_step,
        "max_sequence_length": max_sequence_length, "seed": config.seed, "timesteps": config.timesteps,
        "timestep_shift": config.timestep_shift,
        "entity_dropout": config.entity_dropout, "caption_dropout": config.caption_dropout, "holdout": config.holdout,
    }


# settings added after runs existed: what runs without them did
LATER_SETTINGS = {"lr_schedule": "constant", "caption_dropout": 0.0, "timestep_shift": 1.0}


def lr_factor(step: int, warmup: int, steps: int, cosine: bool) -> float:
    """The learning rate of optimizer step `step` (from 0) as a fraction of `--lr`: a linear warmup over `warmup`
    steps, then constant, or a cosine decay that reaches 0 at step `steps`."""
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return factor * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)) if cosine else factor


def _check_output(out: Path, resume: str | None) -> None:
    """Refuse to start a new run over the results of another."""
    taken = [p for p in ("lora.safetensors", "transformer", "checkpoints") if (out / p).exists()]
    if taken and resume is None:
        raise TrainError(f"{out} already holds a run ({', '.join(taken)}); continue it with --resume latest, or "
                         f"give another -o")


def _trainable(transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in transformer.named_parameters() if p.requires_grad}


def _save_weights(folder: Path, transformer: torch.nn.Module, config: TrainConfig, dtype: torch.dtype) -> None:
    if config.full:
        save_tensors(folder / "transformer.safetensors", {k: v.to(dtype) for k, v in _trainable(transformer).items()})
    else:
        save_lora(folder / "lora.safetensors", transformer, dtype)


def _load_weights(folder: Path, transformer: torch.nn.Module, config: TrainConfig) -> None:
    if not config.full:
        load_lora_into(transformer, folder / "lora.safetensors")
        return
    tensors, params = load_file(folder / "transformer.safetensors"), _trainable(transformer)
    if set(tensors) != set(params):
        raise TrainError(f"{folder}: the checkpoint's parameters do not match this transformer's")
    with torch.no_grad():
        for name, parameter in params.items():
            parameter.copy_(tensors[name])


class Trainer:
    """One training run: set up by `__init__`, carried out by `run`."""

    def __init__(self, config: TrainConfig, reporter: Reporter | None = None) -> None:
        if config.output is None:
            raise TrainError("an output folder is required (-o OUT_DIR)")
        self.config, self.out = config, config.output
        self.accelerator = _accelerator(config)
        self.main = self.accelerator.is_main_process
        self.report: Reporter = reporter if reporter is not None and self.main else _Silent()
        self.deepspeed = self.accelerator.state.distributed_type == DistributedType.DEEPSPEED
        set_seed(config.seed)  # the same LoRA init on every process

        scale = model_info.scale_factor(config.model)
        self.dataset = read_dataset(config.data, scale, config.resolution, config.bucket_step)
        if config.holdout >= len(self.dataset.samples):
            raise TrainError(f"--holdout {config.holdout} leaves no training sample of {len(self.dataset.samples)}")
        cut = len(self.dataset.samples) - config.holdout
        self.samples, held = self.dataset.samples[:cut], self.dataset.samples[cut:]
        world = self.accelerator.num_processes
        self.sampler = BucketBatchSampler([s.bucket for s in self.samples], config.batch_size * world, config.seed)
        if len(self.sampler) == 0:
            raise TrainError(f"no full batch: {len(self.samples)} training samples in buckets "
                             f"{dict(self.dataset.buckets())}, global batch {config.batch_size * world} "
                             f"(--batch-size x processes)")
        if self.main:
            _check_output(self.out, config.resume)
        self.validation_source = read_validation(config.validation, held, self.dataset.base_dir)
        if config.validate_every and not self.validation_source:
            raise TrainError("--validate-every needs validation layouts: --validation PATH or --holdout N")

        defaults = model_info.model_family(config.model)
        if config.export is not None and config.export not in defaults.lora_exports:
            raise TrainError(f"--export {config.export} is not a key style of {defaults.name} LoRAs; expected "
                             f"{' or '.join(defaults.lora_exports)}")
        if (config.max_sequence_length or 0) > defaults.max_sequence_length:
            raise TrainError(f"--max-sequence-length {config.max_sequence_length} is more than a {defaults.name} "
                             f"model takes ({defaults.max_sequence_length})")
        device = self.accelerator.device
        self.dtype = pick_dtype(config.dtype, device)
        family = load_family(config.model, device, self.dtype, explicit_device=config.device is not None)
        self.pipe = EligenPipeline(family, config.model)
        self.max_sequence_length = config.max_sequence_length or model_info.default_max_sequence_length(config.model)
        self.transformer = self.pipe.transformer
        if config.full:
            self.transformer.float().requires_grad_(True)
        else:
            add_lora(self.transformer, config.lora_rank(defaults.lora_rank), config.lora_alpha(defaults.lora_rank),
                     defaults.lora_targets)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()
        self.optimizer = torch.optim.AdamW(list(_trainable(self.transformer).values()), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup=config.warmup_steps, steps=config.steps,
                                    cosine=config.lr_schedule == "cosine"))
        self.identity = _run_identity(config, self.dataset, len(self.samples), len(self.sampler), world,
                                      self.max_sequence_length, defaults.lora_rank)
        self.position, self.resumed_from = Position(0, 0, 0), None
        if config.resume is not None:
            self._resume()

    def _resume(self) -> None:
        folder = find_checkpoint(self.out, self.config.resume or "latest")
        position, recorded = read_state(folder)
        recorded = {**LATER_SETTINGS, **recorded}
        changed = [k for k in self.identity if recorded.get(k) != self.identity[k]]
        if changed:
            details = "; ".join(f"{k}: {recorded.get(k)!r} -> {self.identity[k]!r}" for k in changed)
            raise TrainError(f"{folder} belongs to a run with other settings ({details})")
        _load_weights(folder, self.transformer, self.config)
        if (folder / "optimizer.pt").is_file():
            load_optimizer(folder, self.optimizer)
        else:
            self.report.note(f"{folder} has no optimizer state (written under DeepSpeed): AdamW moments restart")
        load_scheduler(folder, self.scheduler)
        self.position, self.resumed_from = position, folder

    def _prepare_validation(self) -> list[Render]:
        if not self.main or not self.validation_source:
            return []
        return prepare_cases(self.pipe, self.validation_source, self.max_sequence_length)

    def _prompt_length(self) -> dict[str, int]:
        """The global prompt's length where the family reads it at another length than the entity prompts (a key a
        cache records only then, so the caches of other families stay valid)."""
        length = self.pipe.family.defaults.prompt_sequence_length
        return {} if length is None else {"prompt_sequence_length": length}

    def _prepare_cache(self) -> TrainCache | None:
        if not self.config.cache:
            return None
        cache = TrainCache(self.config.cache_dir or self.out / "cache")
        if self.main:
            metadata = hashlib.sha256(self.dataset.metadata.read_bytes()).hexdigest()
            cache.claim({"model": self.config.model, "data": self.identity["data"], "metadata_sha256": metadata,
                         "dtype": str(self.dtype), "max_sequence_length": self.max_sequence_length,
                         "resolution": self.config.resolution, "bucket_step": self.config.bucket_step,
                         **self._prompt_length()})
        self.accelerator.wait_for_everyone()
        self.report.note(f"caching text embeddings and latents in {cache.folder}")
        build_cache(cache, self.pipe, self.samples, self.max_sequence_length, self.accelerator.process_index,
                    self.accelerator.num_processes)
        self.accelerator.wait_for_everyone()
        self.pipe.family.drop_text_encoders()  # every prompt, validation included, is encoded by now
        return cache

    def _inputs(self, batch: dict[str, list[Any]], epoch: int) -> tuple[torch.Tensor, ...]:
        """(x0, noise, t, weight, drop) of a batch; the per-sample draws depend only on (seed, epoch, index).

        `drop` is 0 for a sample trained as it is, 1 without its entities, 2 without its entities and caption."""
        config, device = self.config, self.accelerator.device
        if "latents" in batch:
            x0 = torch.cat(batch["latents"]).to(device)
        else:
            x0 = torch.cat([self.pipe.encode_image(image) for image in batch["image"]])
        width, height = batch["bucket"][0]
        channels = self.pipe.family.latent_channels
        f = self.pipe.scale_factor
        noise, t, weight, drop = [], [], [], []
        for index in batch["index"]:
            draws = torch.Generator().manual_seed(sample_seed(config.seed, epoch, index, "draws"))
            code = int(torch.rand((), generator=draws).item() < config.entity_dropout)
            t_i, w_i = draw_timestep(config.timesteps, draws, self.pipe.family.defaults, config.timestep_shift)
            if config.caption_dropout and torch.rand((), generator=draws).item() < config.caption_dropout:
                code = 2  # drawn after the others, so runs without caption dropout keep their draws
            drop.append(code)
            t.append(t_i)
            weight.append(w_i)
            seed = sample_seed(config.seed, epoch, index, "noise")
            noise.append(pack(get_noise(seed, channels, height // f, width // f, x0.dtype)))
        return (x0, torch.cat(noise).to(device), torch.tensor(t, device=device), torch.tensor(weight, device=device),
                torch.tensor(drop))

    def _conditioning(self, batch: dict[str, list[Any]], drop: torch.Tensor) -> Conditioning:
        device = self.accelerator.device
        if "embeddings" in batch:
            texts = {p: text for embeddings in batch["embeddings"] for p, text in embeddings.items()}
            table = {p: (embeds.to(device), None if pooled is None else pooled.to(device))  # Qwen-Image: no pooled
                     for p, (embeds, pooled, _) in texts.items()}
            entities = {p: entity.to(device) for p, (_, _, entity) in texts.items() if entity is not None}
            encode: PromptEncoder | PromptTable = PromptTable(table, self.pipe.family.text_ids, entities)
        else:
            encode = self.pipe.prompt_encoder(self.max_sequence_length)  # per batch: memory stays flat
        names = [[] if d else list(n) for n, d in zip(batch["entity_prompts"], drop.tolist(), strict=True)]
        regions = [r[:0] if d else r for r, d in zip(batch["regions"], drop.tolist(), strict=True)]
        prompts = ["" if d == 2 else p for p, d in zip(batch["prompt"], drop.tolist(), strict=True)]
        return batch_conditioning(encode, prompts, names, regions)

    def loss(self, model: torch.nn.Module, batch: dict[str, list[Any]], epoch: int) -> torch.Tensor:
        """The rectified-flow loss of a batch (a collated `TrainingSet` slice) with the draws of `epoch`."""
        x0, noise, t, weight, drop = self._inputs(batch, epoch)
        cond = self._conditioning(batch, drop)
        width, height = batch["bucket"][0]
        f = self.pipe.scale_factor
        velocity = self.pipe.family.velocity(model, height // f, width // f, TRAINING_GUIDANCE)
        return rectified_flow_loss(velocity, x0, noise, t, weight, cond)

    def _checkpoint(self, step: int, epoch: int, batch: int) -> None:
        staging = staging_dir(self.out, step)
        if self.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        save_rng(staging, self.accelerator.process_index)
        if self.main:
            _save_weights(staging, self.transformer, self.config, torch.float32)
            if not self.deepspeed:
                save_optimizer(staging, self.optimizer)
            save_scheduler(staging, self.scheduler)
            write_state(staging, Position(step, epoch, batch), self.identity)
        self.accelerator.wait_for_everyone()
        if self.main:
            commit(self.out, step)
            prune(self.out, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _validate(self, cases: list[Render], step: int) -> None:
        if self.main and cases:
            path = self.out / "validation" / f"step-{step:06d}.png"
            save_png(render_grid(self.pipe, cases), path)
            self.report.note(f"wrote {path}")
        self.accelerator.wait_for_everyone()

    def _finish(self, cases: list[Render], step: int) -> list[Path]:
        outputs: list[Path] = []
        if self.main:
            dtype = SAVE_DTYPES[self.config.save_dtype]
            if self.config.full:
                target, staging = self.out / "transformer", self.out / ".transformer.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                self.transformer.to(dtype).save_pretrained(staging)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
                outputs.append(target)
            else:
                save_lora(self.out / "lora.safetensors", self.transformer, dtype)
                outputs.append(self.out / "lora.safetensors")
                if self.config.export is not None:
                    path = self.out / f"lora_{self.config.export}.safetensors"
                    EXPORTS[self.config.export](path, self.transformer, dtype)
                    outputs.append(path)
        if cases and (not self.config.validate_every or step % self.config.validate_every):
            self._validate(cases, step)
        self.accelerator.wait_for_everyone()
        return outputs

    def _prepare(self, cache: TrainCache | None) -> tuple[torch.nn.Module, Any, Any]:
        """The transformer, optimizer and data loader wrapped by accelerate (DDP or DeepSpeed when launched so)."""
        config, accelerator = self.config, self.accelerator
        if self.deepspeed:
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
            if config.max_grad_norm is not None:
                self.report.note("under DeepSpeed, --max-grad-norm is ignored: set gradient_clipping in its JSON")
        loader = torch.utils.data.DataLoader(TrainingSet(self.samples, cache), batch_sampler=self.sampler,
                                             collate_fn=collate, num_workers=config.num_workers)
        prepared = accelerator.prepare(self.transformer, self.optimizer, loader)
        if self.resumed_from is not None:
            load_rng(self.resumed_from, accelerator.process_index)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return prepared

    def _micro_step(self, model: torch.nn.Module, optimizer: Any, batch: dict[str, list[Any]],
                    epoch: int) -> torch.Tensor:
        """Forward and backward of one micro-batch; the optimizer steps when accelerate syncs the gradients."""
        accelerator = self.accelerator
        with accelerator.accumulate(model):
            loss = self.loss(model, batch, epoch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        return loss.detach().float().cpu()

    def run(self) -> TrainResult:
        """Train to `config.steps` (or `config.stop_at`): checkpoints, validation grids, the log, the final weights."""
        config, accelerator = self.config, self.accelerator
        cases = self._prepare_validation()
        model, optimizer, loader = self._prepare(self._prepare_cache())
        batches_per_epoch = len(self.sampler)
        step = self.position.step
        end = min(config.steps, config.stop_at or config.steps)
        if config.stop_at is not None and step >= config.stop_at:
            raise TrainError(f"--stop-at {config.stop_at}: {self.resumed_from} is already at step {step}")
        epoch, offset = divmod(self.position.epoch * batches_per_epoch + self.position.batch, batches_per_epoch)
        samples_per_step = config.batch_size * accelerator.num_processes * config.grad_accum
        self.report.start(config.steps, step)
        started, first_step, running, last_loss = time.perf_counter(), step, torch.zeros(()), None
        log = (self.out / "log.jsonl").open("a", encoding="utf-8") if self.main else None
        try:
            while step < end:
                self.sampler.epoch = epoch
                for batch in accelerator.skip_first_batches(loader, offset) if offset else loader:
                    running += self._micro_step(model, optimizer, batch, epoch)
                    offset += 1
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    used_lr = self.scheduler.get_last_lr()[0]  # the rate of this step; the log reports it
                    self.scheduler.step()
                    last_loss = accelerator.reduce(running.to(accelerator.device) / config.grad_accum, "mean").item()
                    running = torch.zeros(())
                    if not math.isfinite(last_loss):
                        raise TrainError(f"the loss is {last_loss} at step {step}; resume from the last checkpoint "
                                         f"with a lower --lr (or --max-grad-norm)")
                    rate = (step - first_step) * samples_per_step / (time.perf_counter() - started)
                    report = StepReport(step, config.steps, last_loss, used_lr, rate)
                    self.report.step(report)
                    if log is not None:
                        log.write(json.dumps({**asdict(report), "epoch": epoch,
                                              "cpu_s": round(time.process_time(), 2)}) + "\n")
                        log.flush()
                    if step == end or (config.save_every and step % config.save_every == 0):
                        self._checkpoint(step, epoch, offset)
                    if config.validate_every and step % config.validate_every == 0:
                        self._validate(cases, step)
                    if step == end:
                        break
                else:
                    epoch, offset = epoch + 1, 0
        finally:
            if log is not None:
                log.close()
        if step < config.steps:  # stopped at --stop-at: the checkpoint is the output
            return TrainResult(step, last_loss, [final_dir(self.out, step)])
        return TrainResult(step, last_loss, self._finish(cases, step))


def train(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Run (or resume) a training run to `config.steps`."""
    return Trainer(config, reporter).run()


def check(data: Path, model: str, resolution: int, bucket_step: int) -> Dataset:
    """Validate a whole dataset, decoding every image (`eligen train --check`); raises `DatasetError`."""
    return read_dataset(data, model_info.scale_factor(model), resolution, bucket_step, decode=True)


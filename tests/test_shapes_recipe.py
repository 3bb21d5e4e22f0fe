"""The shapes recipe runs end to end in miniature: every script of recipes/shapes.sh for a couple of steps, in
the order of the recipe, into folders that load as a model. Catches a recipe script that no longer matches
the package (the shipped weights must stay reproducible)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


def run(*args: str | Path, **extra_env: str) -> None:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the scripts call `eligen`
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": path, **extra_env}
    done = subprocess.run([str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def eligen(*args: str | Path) -> None:
    run(sys.executable, "-m", "eligen", *args)


def test_recipe_scripts_run_in_order_and_ship_a_loadable_model(tmp_path: Path) -> None:
    vae, sharp, base = tmp_path / "vae", tmp_path / "vae-sharp", tmp_path / "base"
    run(sys.executable, RECIPES / "shapes_vae.py", "-o", vae, "--steps", "2", "--batch-size", "4")
    run(sys.executable, RECIPES / "shapes_vae.py", "-o", sharp, "--init", vae, "--decoder-only", "--steps", "2",
        "--batch-size", "4", "--seed", "1")
    encoder_before = {k: v for k, v in load_file(vae / "diffusion_pytorch_model.safetensors").items()
                      if k.startswith("encoder.")}
    after = load_file(sharp / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())  # frozen: the latents stay the same
    assert any(not torch.equal(after[k], v) for k, v in load_file(vae / "diffusion_pytorch_model.safetensors").items()
               if k.startswith("decoder."))
    config = lambda folder: json.loads((folder / "config.json").read_text())  # noqa: E731
    assert (config(sharp)["scaling_factor"], config(sharp)["shift_factor"]) == (
        config(vae)["scaling_factor"], config(vae)["shift_factor"])

    run(sys.executable, RECIPES / "shapes_base.py", "--vae", vae, "-o", base, "--steps", "2", "--batch-size", "4",
        "--pool", "16", "--warmup", "1")
    assert json.loads((base / "eligen.json").read_text())["size"] == [64, 64]
    eligen("data", "shapes", "-o", tmp_path / "data", "--n", "8", "--seed", "1", "--size", "64")
    small = ("--data", tmp_path / "data", "--steps", "2", "--batch-size", "4", "--save-every", "0")
    eligen("train", "--config", RECIPES / "shapes-eligen.yaml", "--model", base, "-o", tmp_path / "eligen", *small)
    run(sys.executable, RECIPES / "shapes_ship.py", "--base", base, "--eligen", tmp_path / "eligen",
        "-o", tmp_path / "stage3")
    eligen("train", "--config", RECIPES / "shapes-eligen-continue.yaml", "--model", tmp_path / "stage3" / "shapes",
           "-o", tmp_path / "eligen2", *small)
    shipped = tmp_path / "shipped"
    run(sys.executable, RECIPES / "shapes_ship.py", "--base", base, "--eligen", tmp_path / "eligen",
        "--eligen", tmp_path / "eligen2", "--vae", sharp, "-o", shipped)
    stages = json.loads((shipped / "shapes" / "eligen_train_config.json").read_text())
    assert [s["lr"] for s in stages] == [3e-4, 2e-4]  # both EliGen stages' settings, in order

    # the 16x16-grid stage: shapes_long.sh in miniature (its three parts, each ending at its --stop-at)
    next_runs = tmp_path / "next"
    run("bash", RECIPES / "shapes_long.sh", next_runs, shipped / "shapes", SCENES="4", HELD="2",
        PARTS="4:1 3:2 3", TRAIN_ARGS="--batch-size 4 --save-every 0")
    assert json.loads((next_runs / "warm128" / "eligen.json").read_text())["size"] == [128, 128]
    log = [json.loads(line) for line in (next_runs / "long" / "log.jsonl").read_text().splitlines()]
    assert [(e["step"], e["total"]) for e in log] == [(1, 4), (2, 3), (3, 3)]
    final = tmp_path / "final"
    run(sys.executable, RECIPES / "shapes_ship.py", "--base", base, "--eligen", tmp_path / "eligen",
        "--eligen", tmp_path / "eligen2", "--eligen", next_runs / "long", "--vae", sharp, "--size", "128", "-o", final)
    assert json.loads((final / "shapes" / "eligen.json").read_text())["size"] == [128, 128]
    assert json.loads((final / "shapes-base" / "eligen.json").read_text())["size"] == [64, 64]
    assert len(json.loads((final / "shapes" / "eligen_train_config.json").read_text())) == 3

    # the second 16x16 stage: shapes_more.sh in miniature (both designs side by side, every checkpoint kept and
    # scored), then shipped from the deeper design
    more_runs = tmp_path / "more"
    run("bash", RECIPES / "shapes_more.sh", more_runs, final / "shapes", SCENES="4", HELD="2", MORE_STEPS="2",
        DEEPER_STEPS="2", SCORE_EVERY="1", TRAIN_ARGS="--batch-size 4 --save-every 1")
    blocks = lambda folder: json.loads((folder / "config.json").read_text())["num_single_layers"]  # noqa: E731
    assert blocks(more_runs / "deeper" / "transformer") == blocks(final / "shapes" / "transformer") + 2
    for name in ("more", "deeper"):
        assert sorted(p.name for p in (more_runs / name / "kept").iterdir()) == [
            "step-000001.safetensors", "step-000002.safetensors"]
        for step in range(3):
            assert (more_runs / name / "eval" / f"step-{step:06d}" / "results.json").is_file()

    # the third stage: shapes_deeper.sh in miniature (the deeper design trained on in two parts, the first ending at
    # its --stop-at), shipped with a static sigma shift
    third_runs = tmp_path / "third"
    run("bash", RECIPES / "shapes_deeper.sh", third_runs, more_runs, SCENES="4", PARTS="3:1 3", KEEP_EVERY="2",
        TRAIN_ARGS="--batch-size 4 --save-every 1")
    log = [json.loads(line) for line in (third_runs / "deeper3" / "log.jsonl").read_text().splitlines()]
    assert [(e["step"], e["total"]) for e in log] == [(1, 3), (2, 3), (3, 3)]
    assert [p.name for p in (third_runs / "deeper3" / "kept").iterdir()] == ["step-000002.safetensors"]
    assert blocks(third_runs / "deeper3" / "transformer") == blocks(more_runs / "deeper" / "transformer")
    deeper = tmp_path / "deeper"
    run(sys.executable, RECIPES / "shapes_ship.py", "--base", base, "--eligen", tmp_path / "eligen",
        "--eligen", tmp_path / "eligen2", "--eligen", next_runs / "long", "--eligen", more_runs / "deeper",
        "--eligen", third_runs / "deeper3", "--vae", sharp, "--size", "128", "--steps", "16", "--shift", "3",
        "-o", deeper)
    declared = json.loads((deeper / "shapes" / "eligen.json").read_text())
    assert (declared["size"], declared["steps"]) == ([128, 128], 16)
    assert json.loads((deeper / "shapes-base" / "eligen.json").read_text())["steps"] == 24
    scheduler = lambda folder: json.loads((folder / "scheduler" / "scheduler_config.json").read_text())  # noqa: E731
    assert (scheduler(deeper / "shapes")["use_dynamic_shifting"], scheduler(deeper / "shapes")["shift"]) == (False, 3)
    assert scheduler(deeper / "shapes-base")["use_dynamic_shifting"]  # the base keeps its resolution-dependent shift

    # the fourth stage: shapes_highnoise.sh in miniature (`more` trained on with timesteps shifted to high noise)
    run("bash", RECIPES / "shapes_highnoise.sh", third_runs, more_runs, SCENES="4", PARTS="2", KEEP_EVERY="2",
        TRAIN_ARGS="--batch-size 4 --save-every 1")
    trained = json.loads((third_runs / "highnoise" / "config.json").read_text())
    assert (trained["timesteps"], trained["timestep_shift"], trained["steps"]) == ("logit-normal", 3.0, 2)
    assert blocks(third_runs / "highnoise" / "transformer") == blocks(more_runs / "more" / "transformer")

    # the decoder for the last step: shapes_decoder.py in both modes, the second from the first's decoder, shipped
    # into `shapes` only
    decoder, decoder2 = tmp_path / "decoder", tmp_path / "decoder2"
    run(sys.executable, RECIPES / "shapes_decoder.py", deeper / "shapes", "-o", decoder, "--steps", "2",
        "--batch-size", "2")
    run(sys.executable, RECIPES / "shapes_decoder.py", deeper / "shapes", "-o", decoder2, "--init", decoder,
        "--last-steps", "2", "--steps", "2", "--batch-size", "2", "--loss", "l1", "--edge-weight", "4")
    summary = json.loads((decoder2 / "train_summary.json").read_text())
    assert (summary["steps"], summary["last_steps"], summary["loss"], summary["edge_weight"]) == (2, 2, "l1", 4.0)
    # a decoder trained on a cache of pairs filled by two workers, then on the cache grown (the shipped decoder5's
    # way: the filled shards are kept, the new ones added), here also grown itself and trained under bf16 autocast
    pairs, grown = tmp_path / "pairs", tmp_path / "decoder-grown"

    def fill(n: int) -> None:
        for part in ("0/2", "1/2"):
            run(sys.executable, RECIPES / "shapes_decoder.py", deeper / "shapes", "--pairs", pairs, "--n-pairs", str(n),
                "--shard-size", "2", "--last-steps", "2", "--part", part, "--pairs-only")

    fill(3)
    assert sorted(p.name for p in pairs.iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert load_file(pairs / "shard-00001.safetensors")["image"].shape == (1, 3, 128, 128)
    first, short = (pairs / "shard-00000.safetensors").read_bytes(), load_file(pairs / "shard-00001.safetensors")
    fill(6)  # shard 0 is kept; shard 1, short of a pair, is written again with its pair first
    assert sorted(p.name for p in pairs.iterdir()) == [f"shard-0000{k}.safetensors" for k in range(3)]
    assert (pairs / "shard-00000.safetensors").read_bytes() == first
    grown_shard = load_file(pairs / "shard-00001.safetensors")
    assert grown_shard["image"].shape == (2, 3, 128, 128)
    assert all(torch.equal(grown_shard[key][:1], short[key]) for key in ("clean", "estimate", "image"))
    run(sys.executable, RECIPES / "shapes_decoder.py", deeper / "shapes", "-o", grown, "--init", decoder2,
        "--pairs", pairs, "--n-pairs", "6", "--shard-size", "2", "--last-steps", "2", "--widen", "2", "--layers", "2",
        "--mid-attention", "--bf16", "--seed", "2", "--steps", "2", "--batch-size", "2")
    summary = json.loads((grown / "train_summary.json").read_text())
    assert (summary["bf16"], summary["seed"], summary["pairs"]["n"]) == (True, 2, 6)
    config = json.loads((grown / "config.json").read_text())
    assert (config["block_out_channels"], config["layers_per_block"], config["mid_block_add_attention"]) == (
        [32, 64, 128], 2, True)
    run(sys.executable, RECIPES / "shapes_ship.py", "--base", base, "--eligen", tmp_path / "eligen",
        "--eligen", tmp_path / "eligen2", "--eligen", next_runs / "long", "--eligen", more_runs / "more",
        "--vae", sharp, "--shapes-vae", grown, "--size", "128", "--steps", "12", "--shift", "9", "-o", deeper)
    vae = lambda folder: load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")  # noqa: E731
    ours, base_vae = vae(deeper / "shapes"), vae(deeper / "shapes-base")
    assert any(not torch.equal(v, base_vae[k]) for k, v in ours.items() if k.startswith("decoder."))

    # claim 7 on the 16x16 grid: shapes_lora_vs_full.sh in miniature (both runs trained and scored)
    lvf = tmp_path / "lvf"
    run("bash", RECIPES / "shapes_lora_vs_full.sh", lvf, final / "shapes-base", SCENES="4", HELD="2", STEPS="2",
        TRAIN_ARGS="--batch-size 4")
    assert (lvf / "lvf-full" / "transformer").is_dir() and (lvf / "lvf-lora" / "lora.safetensors").is_file()
    for name in ("lvf-full", "lvf-lora"):
        assert json.loads((lvf / name / "eval" / "results.json").read_text())["options"]["steps"] == 12

    from eligen.pipeline.generate import EligenPipeline
    from eligen.pipeline.layout import parse_layout

    layout = parse_layout({"prompt": "a red circle", "steps": 2,
                           "entities": [{"prompt": "a red circle", "box": [10, 10, 40, 40]}]})
    for folder, side in ((shipped / "shapes", 64), (final / "shapes", 128), (final / "shapes-base", 64),
                         (deeper / "shapes", 128)):
        pipe = EligenPipeline.from_pretrained(str(folder), device="cpu")
        (image,) = pipe.generate(layout, [0])
        assert image.size == (side, side)  # the folder's declared size, not FLUX.1-dev's 1024
        assert np.isfinite(np.asarray(image, dtype=float)).all()


def test_base_script_writes_an_untrained_folder_of_another_design(tmp_path: Path) -> None:
    """`--steps 0` with `--size 128 --heads 8` (a 16x16 token grid, twice the width): the start of a single-stage
    design; a layout without `size`, in fractions of the canvas as for the 64x64 world, renders at the folder's
    declared 128x128."""
    vae, base = tmp_path / "vae", tmp_path / "base"
    run(sys.executable, RECIPES / "shapes_vae.py", "-o", vae, "--steps", "1", "--batch-size", "2")
    run(sys.executable, RECIPES / "shapes_base.py", "--vae", vae, "-o", base, "--steps", "0", "--pool", "4",
        "--size", "128", "--heads", "8")
    assert json.loads((base / "eligen.json").read_text())["size"] == [128, 128]
    config = json.loads((base / "transformer" / "config.json").read_text())
    design = (config["num_attention_heads"], config["attention_head_dim"], config["axes_dims_rope"])
    assert design == (8, 32, [8, 12, 12])

    from eligen.pipeline.generate import EligenPipeline
    from eligen.pipeline.layout import parse_layout

    pipe = EligenPipeline.from_pretrained(str(base), device="cpu")
    layout = parse_layout({"prompt": "a red circle", "steps": 1, "units": "fraction",
                           "entities": [{"prompt": "a red circle", "box": [0.15, 0.15, 0.6, 0.6]}]})
    (image,) = pipe.generate(layout, [0])
    assert image.size == (128, 128)


def test_decoder_loss_weighs_outline_pixels() -> None:
    """shapes_decoder.py's pixel loss: with no edge weight it is the plain mean of |e| (+ e^2); with one, an error
    on a shape's outline counts 1 + W times as much as one inside it."""
    decoder = load_decoder_recipe()
    images = -torch.ones(1, 3, 12, 12)
    images[:, :, 4:8, 4:8] = 1.0  # a 4x4 square: its outline is the 6x6 ring around and on its edge (32 pixels)
    recon = images + 0.1 * torch.randn(1, 3, 12, 12)
    error = (recon - images).abs()
    assert torch.allclose(decoder.pixel_loss(recon, images, "l1+mse", 0.0), (error + error**2).mean())
    assert torch.allclose(decoder.pixel_loss(recon, images, "l1", 0.0), error.mean())
    inside = images.clone()
    inside[:, :, 0, 0] += 0.5  # a corner pixel, far from the square
    outline = images.clone()
    outline[:, :, 4, 4] += 0.5  # the square's corner
    ring = 6 * 6 - 2 * 2
    weight_sum = 12 * 12 + 3.0 * ring  # W = 3
    assert torch.isclose(decoder.pixel_loss(inside, images, "l1", 3.0), torch.tensor(0.5 / weight_sum))
    assert torch.isclose(decoder.pixel_loss(outline, images, "l1", 3.0), torch.tensor(4 * 0.5 / weight_sum))


def load_decoder_recipe():  # the recipe script, loaded from its path as a module
    spec = importlib.util.spec_from_file_location("shapes_decoder", RECIPES / "shapes_decoder.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grown_vae_encodes_and_decodes_as_before() -> None:
    """shapes_decoder.py's `grown`: twice the channels, two layers per block and mid-block attention, yet the same
    latents and (until trained) the same images: float32 sums in another order, so agreement to 1e-4 of values of
    order 1 (seen: about 1e-5)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=16, norm_num_groups=8,
                        layers_per_block=1, mid_block_add_attention=False).eval()
    big = load_decoder_recipe().grown(vae, 2, 2, True).eval()
    assert list(big.config.block_out_channels) == [32, 64, 128] and big.config.norm_num_groups == 16
    assert sum(p.numel() for p in big.decoder.parameters()) > 3 * sum(p.numel() for p in vae.decoder.parameters())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        assert torch.allclose(big.encode(images).latent_dist.mode(), latents, atol=1e-4)
        assert torch.allclose(big.decode(latents).sample, vae.decode(latents).sample, atol=1e-4)
    # and it is not the old model in disguise: its new channels are computed (randomly, to be trained)
    assert big.decoder.up_blocks[-1].resnets[0].conv1.weight[16:].abs().sum() > 0


def test_pair_cache_refuses_shards_sampled_otherwise(tmp_path: Path) -> None:
    """A pair cache filled with one sampling setting or shard size is not silently used with another, and a missing
    shard names the way to fill it."""
    from safetensors.torch import save_file

    decoder = load_decoder_recipe()
    settings = {"sigma": "0.3 0.65", "last_steps": "2", "size": "128"}
    shard = {"clean": torch.zeros(2, 16, 4, 4), "estimate": torch.zeros(2, 16, 4, 4),
             "image": torch.zeros(2, 3, 16, 16, dtype=torch.uint8)}
    save_file(shard, str(tmp_path / "shard-00000.safetensors"), metadata=settings)
    clean, _, image = decoder.load_pairs(tmp_path, 2, 2, settings)
    assert clean.shape == (2, 16, 4, 4) and image.dtype == torch.uint8
    with pytest.raises(SystemExit, match="sampled with"):
        decoder.load_pairs(tmp_path, 2, 2, {**settings, "last_steps": "None"})
    with pytest.raises(SystemExit, match=r"shard-00001\.safetensors is missing"):
        decoder.load_pairs(tmp_path, 4, 2, settings)
    with pytest.raises(SystemExit, match="holds 2 pairs, expected 1"):  # filled with another --shard-size
        decoder.load_pairs(tmp_path, 1, 1, settings)

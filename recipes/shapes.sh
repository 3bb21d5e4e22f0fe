#!/usr/bin/env bash
# The whole shapes recipe (docs/shapes.md), seeded: data, VAE, base model, EliGen weights, evaluation, shipping.
#   bash recipes/shapes.sh [RUNS_DIR]      (default runs/shapes; on a busy machine: OMP_NUM_THREADS=1)
# Each training script also stops at its --minutes; set them high (as here) for a result that depends on the
# seed only, not on the machine's speed. docs/shapes.md says how the shipped run was made.
set -euo pipefail
runs=${1:-runs/shapes}
here=$(dirname "$0")
mkdir -p "$runs"
python "$here/shapes_vae.py" -o "$runs/vae" --steps 700 --minutes 600
python "$here/shapes_base.py" --vae "$runs/vae" -o "$runs/base" --steps 5000 --minutes 600
eligen data shapes -o "$runs/data" --n 12000 --seed 1
eligen data shapes -o "$runs/heldout" --n 64 --seed 999 --entities 2-3 --layouts "$runs/heldout-layouts"
eligen train --config "$here/shapes-eligen.yaml" --model "$runs/base" --data "$runs/data" -o "$runs/eligen"
# the shipped weights continued that run (the cosine restarts at half the rate, decays to 0 at step 3000)
eligen train --config "$here/shapes-eligen.yaml" --model "$runs/base" --data "$runs/data" -o "$runs/eligen" \
    --resume latest --steps 3000
eval=(eligen eval "$runs/heldout-layouts" --seeds 4 --steps 16)
"${eval[@]}" --model "$runs/base" --global-only -o "$runs/eval-a"
"${eval[@]}" --model "$runs/base" -o "$runs/eval-b"
"${eval[@]}" --model "$runs/base" --transformer "$runs/eligen/transformer/diffusion_pytorch_model.safetensors" \
    -o "$runs/eval-c"
python "$here/shapes_ship.py" --base "$runs/base" --eligen "$runs/eligen" -o "$here/../pipeline/shapes/builtin-models"

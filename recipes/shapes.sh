#!/usr/bin/env bash
# The whole shapes recipe (docs/shapes.md), seeded: data, VAE, base model, EliGen weights, the 16x16-grid runs,
# shipping, evaluation.
#   bash recipes/shapes.sh [RUNS_DIR]      (default runs/shapes; on a busy machine: OMP_NUM_THREADS=1)
# Each training script also stops at its --minutes; set them high (as here) for a result that depends on the
# seed only, not on the machine's speed. docs/shapes.md says how the shipped run was made.
set -euo pipefail
runs=${1:-runs/shapes}
here=$(dirname "$0")
mkdir -p "$runs"
python "$here/shapes_vae.py" -o "$runs/vae" --steps 700 --minutes 600
python "$here/shapes_base.py" --vae "$runs/vae" -o "$runs/base" --steps 5000 --minutes 600
eligen data shapes -o "$runs/data" --n 12000 --seed 1 --size 64
eligen data shapes -o "$runs/heldout" --n 64 --seed 999 --entities 2-3 --size 64 \
    --layouts "$runs/heldout-layouts"
eligen train --config "$here/shapes-eligen.yaml" --model "$runs/base" --data "$runs/data" -o "$runs/eligen"
# the shipped weights continued that run (the cosine restarts at half the rate, decays to 0 at step 3000)
eligen train --config "$here/shapes-eligen.yaml" --model "$runs/base" --data "$runs/data" -o "$runs/eligen" \
    --resume latest --steps 3000
python "$here/shapes_ship.py" --base "$runs/base" --eligen "$runs/eligen" -o "$runs/stage3"
# step 3b: more EliGen training on 40,000 fresh scenes from those weights; step 1b: a sharper decoder
eligen data shapes -o "$runs/data2" --n 40000 --seed 2 --size 64
eligen train --config "$here/shapes-eligen-continue.yaml" --model "$runs/stage3/shapes" --data "$runs/data2" \
    -o "$runs/eligen2"
python "$here/shapes_vae.py" -o "$runs/vae-sharp" --init "$runs/vae" --decoder-only --lr 5e-4 --steps 800 --seed 1
python "$here/shapes_ship.py" --base "$runs/base" --eligen "$runs/eligen" --eligen "$runs/eligen2" \
    --vae "$runs/vae-sharp" -o "$runs/stage5"    # the 8x8 design (the built-in models of 2-6 Dec 2026)
# the next design: four designs at equal CPU time, then the chosen one's long run (a 16x16 token grid, 128x128
# scenes, from the 8x8 model's weights; in parts: run the same line again to continue it)
bash "$here/shapes_compare.sh" "$runs/next" "$runs/stage5/shapes" 150
bash "$here/shapes_long.sh" "$runs/next" "$runs/stage5/shapes"
python "$here/shapes_ship.py" --base "$runs/base" --eligen "$runs/eligen" --eligen "$runs/eligen2" \
    --eligen "$runs/next/long" --vae "$runs/vae-sharp" --size 128 -o "$runs/stage7"  # the built-in models of 6 Dec
# a second stage on the 16x16 grid: the long run's weights trained on, as they are and with two more blocks, side
# by side; the first (`more`) is shipped, sampling with a static shift of 9 in 12 steps by default (the third and
# fourth stages, recipes/shapes_deeper.sh and recipes/shapes_highnoise.sh, trained on the deeper design and `more`
# with timesteps at high noise; neither is shipped: neither did better)
bash "$here/shapes_more.sh" "$runs/more" "$runs/stage7/shapes"
ship=(python "$here/shapes_ship.py" --base "$runs/base" --eligen "$runs/eligen" --eligen "$runs/eligen2"
      --eligen "$runs/next/long" --eligen "$runs/more/more" --vae "$runs/vae-sharp" --size 128 --steps 12 --shift 9)
"${ship[@]}" -o "$runs/stage9"
# a decoder for the sampler's last step: `shapes`' VAE decoder trained on that model's one-step estimates, then on
# the last two steps of its own schedule, then on a cache of 24,000 such pairs (filled by two processes side by
# side), then on that cache grown to 48,000 pairs under bf16 autocast, into `shapes` only
python "$here/shapes_decoder.py" "$runs/stage9/shapes" -o "$runs/decoder" --steps 600 --minutes 600
python "$here/shapes_decoder.py" "$runs/stage9/shapes" -o "$runs/decoder2" --init "$runs/decoder" --last-steps 2 \
    --lr 1e-4 --steps 600 --minutes 600
fill_pairs() {  # fill the cache to $1 pairs with two processes side by side (a filled shard is kept)
    local fillers=() part pid
    for part in 0/2 1/2; do
        OMP_NUM_THREADS=1 python "$here/shapes_decoder.py" "$runs/stage9/shapes" --pairs "$runs/pairs" --n-pairs "$1" \
            --last-steps 2 --part "$part" --pairs-only &
        fillers+=($!)
    done
    for pid in "${fillers[@]}"; do wait "$pid"; done  # each one's exit status, so a failed filler stops the recipe
}
fill_pairs 24000
python "$here/shapes_decoder.py" "$runs/stage9/shapes" -o "$runs/decoder4" --init "$runs/decoder2" \
    --pairs "$runs/pairs" --n-pairs 24000 --last-steps 2 --lr 1e-4 --steps 1571 --minutes 600
fill_pairs 48000
python "$here/shapes_decoder.py" "$runs/stage9/shapes" -o "$runs/decoder5" --init "$runs/decoder4" \
    --pairs "$runs/pairs" --n-pairs 48000 --last-steps 2 --lr 1e-4 --steps 3800 --seed 2 --bf16 --minutes 600
"${ship[@]}" --shapes-vae "$runs/decoder5" -o "$here/../pipeline/shapes/builtin-models"
# the paper's LoRA against a full fine-tune, on the 16x16 grid (claim 7 of docs/shapes.md)
bash "$here/shapes_lora_vs_full.sh" "$runs/lora-vs-full" "$runs/stage9/shapes-base"
eval=(eligen eval --seeds 4)
"${eval[@]}" "$runs/heldout-layouts" --model shapes-base --global-only --steps 16 -o "$runs/eval-a"
"${eval[@]}" "$runs/heldout-layouts" --model shapes-base --steps 16 -o "$runs/eval-b"
"${eval[@]}" "$runs/next/held128-64-layouts" --model shapes -o "$runs/eval-c"  # at its own 12 steps

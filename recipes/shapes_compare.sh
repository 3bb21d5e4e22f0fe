#!/usr/bin/env bash
# The short design comparison of docs/shapes.md: four designs trained for the same process CPU time, one torch
# thread each, every checkpoint kept, then each checkpoint scored on 32 held-out layouts.
#   bash recipes/shapes_compare.sh RUNS_DIR START [CPU_SECONDS] [DESIGN ...]     (default 150 s, all four designs)
# START is the 8x8 model the designs start from or are compared with: the `shapes` folder shapes_ship.py wrote before
# this step (the built-in `shapes` of 2-6 Dec 2026).
#   python scripts/shapes_compare_plot.py RUNS_DIR -o docs/images/shapes-compare.png      (curves and table)
# CPU time, not wall time: `ulimit -t` ends each training process when it has used CPU_SECONDS (imports, loading
# and training; the latents and text embeddings are cached beforehand, outside the budget), so runs on a busy
# machine, or two side by side, get the same compute. The checkpoints' CPU seconds are in each log.jsonl (cpu_s).
set -euo pipefail
runs=$1
start=$(cd "$2" && pwd)
budget=${3:-150}
shift $(( $# < 3 ? $# : 3 ))
designs=("$@")
[ ${#designs[@]} -gt 0 ] || designs=(control grid16-warm grid16-scratch grid8-scratch)
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
mkdir -p "$runs"
cd "$runs"
[ -d data64 ] || eligen data shapes -o data64 --n 8000 --seed 1 --size 64
[ -d data128 ] || eligen data shapes -o data128 --n 8000 --seed 1 --size 128
[ -d held64 ] || eligen data shapes -o held64 --n 32 --seed 999 --entities 2-3 --size 64 --layouts held64-layouts
[ -d held128 ] || eligen data shapes -o held128 --n 32 --seed 999 --entities 2-3 --size 128 \
    --layouts held128-layouts
# untrained folders (START's VAE and text encoders, a fresh transformer); START as it is, and at 128x128
[ -d init64 ] || python "$here/shapes_base.py" --vae "$start/vae" -o init64 --steps 0 --pool 64 --size 64
[ -d init128 ] || python "$here/shapes_base.py" --vae "$start/vae" -o init128 --steps 0 --pool 64 --size 128
[ -d shapes64 ] || cp -r "$start" shapes64
if [ ! -d warm128 ]; then
    cp -r "$start" warm128
    python -c "import json, sys; p = 'warm128/eligen.json'; d = json.load(open(p)); d['size'] = [128, 128]
json.dump(d, open(p, 'w'), indent=2)"
fi

design() {  # name -> model data resolution lr save_every caption_dropout
    case $1 in
        control) echo "shapes64 data64 64 2e-4 50 0" ;;          # the 8x8 design, continued
        grid16-warm) echo "warm128 data128 128 2e-4 15 0" ;;      # today's weights on a 16x16 grid
        grid16-scratch) echo "init128 data128 128 5e-4 15 0.1" ;; # 16x16 grid, one stage from scratch
        grid8-scratch) echo "init64 data64 64 5e-4 50 0.1" ;;    # 8x8 grid, one stage from scratch
        *) echo "unknown design $1" >&2; exit 2 ;;
    esac
}

for name in "${designs[@]}"; do
    read -r model data side lr every captions <<< "$(design "$name")"
    common=(--config "$here/shapes-compare.yaml" --model "$model" --data "$data" --resolution "$side" --lr "$lr"
            --caption-dropout "$captions" --cache-dir "cache-$model")
    [ -d "cache-$model" ] || eligen train "${common[@]}" -o "precache-$model" --steps 1
    if [ ! -f "$name/log.jsonl" ]; then
        ( ulimit -t "$budget"; exec nice -n 10 eligen train "${common[@]}" --save-every "$every" --steps 100000 \
            -o "$name" ) > "$name.log" 2>&1 || true  # ended by the CPU limit (SIGXCPU)
    fi
    held="held$side-layouts"
    case $name in  # the starting point of the designs that start from START's weights
        control|grid16-warm) [ -f "$name/eval/step-000000/results.json" ] || nice -n 10 eligen eval "$held" \
            --model "$model" --seeds 1 --steps 16 --cfg 3 -o "$name/eval/step-000000" > /dev/null 2>&1 ;;
    esac
    for checkpoint in "$name"/checkpoints/step-*; do
        [ -f "$checkpoint/transformer.safetensors" ] || continue
        out="$name/eval/$(basename "$checkpoint")"
        [ -f "$out/results.json" ] || nice -n 10 eligen eval "$held" --model "$model" \
            --transformer "$checkpoint/transformer.safetensors" --seeds 1 --steps 16 --cfg 3 -o "$out" \
            > /dev/null 2>&1
    done
done

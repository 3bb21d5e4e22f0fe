#!/usr/bin/env bash
# The long run of the design chosen in docs/shapes.md's comparison, in parts: every call continues the run in
# RUNS_DIR/long from its newest checkpoint (a checkpoint every 50 steps, the last two kept), until step 6000.
#   bash recipes/shapes_long.sh RUNS_DIR                     (stop it at any time; the same command resumes it)
#   bash recipes/shapes_long.sh RUNS_DIR --score             (score the newest checkpoint on the held-out layouts)
# One torch thread under nice by default (OMP_NUM_THREADS wins). Its data, cache and starting folder are those of
# recipes/shapes_compare.sh, made here when missing.
set -euo pipefail
runs=$1
here=$(cd "$(dirname "$0")" && pwd)
shipped="$here/../pipeline/shapes/builtin-models/shapes"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$runs"
cd "$runs"
[ -d data128 ] || eligen data shapes -o data128 --n 8000 --seed 1 --size 128
[ -d held128-64 ] || eligen data shapes -o held128-64 --n 64 --seed 999 --entities 2-3 --size 128 \
    --layouts held128-64-layouts
if [ ! -d warm128 ]; then  # the shipped weights, declared at 128x128
    cp -r "$shipped" warm128
    python -c "import json; p = 'warm128/eligen.json'; d = json.load(open(p)); d['size'] = [128, 128]
json.dump(d, open(p, 'w'), indent=2)"
fi
if [ "${2:-}" = --score ]; then
    newest=$(ls -d long/checkpoints/step-* | tail -n 1)
    exec nice -n 10 eligen eval held128-64-layouts --model warm128 --transformer "$newest/transformer.safetensors" \
        --seeds 4 --steps 16 -o "long/eval/$(basename "$newest")"
fi
resume=()
[ -d long/checkpoints ] && resume=(--resume latest)
exec nice -n 10 eligen train --config "$here/shapes-long.yaml" --model warm128 --data data128 --cache-dir cache-warm128 \
    -o long "${resume[@]}"

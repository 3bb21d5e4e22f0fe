#!/usr/bin/env bash
# The paper's LoRA against a full fine-tune, in miniature on the 16x16 grid (docs/shapes.md, claim 7): BASE (the
# `shapes-base` folder: global captions only, never trained with entities) trained with entities on 6,000 fresh
# 128x128 scenes, 300 steps of batch 64 with recipes/shapes-eligen-continue.yaml's settings, once as a full fine-tune
# and once as a LoRA (rank 32, lr 1e-3); both scored on the 64 held-out layouts (seeds 0-1) with the shipped
# sampling (128x128, a static shift of 9, 12 steps, CFG 3).
#   bash recipes/shapes_lora_vs_full.sh RUNS_DIR BASE
# One torch thread by default (OMP_NUM_THREADS wins); the two runs one after the other, so their samples/s compare.
# For a trial in miniature (the test suite's), SCENES, HELD, STEPS and TRAIN_ARGS change the data, the held-out
# layouts, the steps and add to every `eligen train`.
set -euo pipefail
scenes=${SCENES:-6000}
held=${HELD:-64}
steps=${STEPS:-300}
read -r -a train_args <<< "${TRAIN_ARGS:-}"
runs=$1
base=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$runs"
cd "$runs"
[ -d lvf-data ] || eligen data shapes -o lvf-data --n "$scenes" --seed 3 --size 128
[ -d held128-64 ] || eligen data shapes -o held128-64 --n "$held" --seed 999 --entities 2-3 --size 128 \
    --layouts held128-64-layouts
if [ ! -d base128 ]; then  # BASE declared at 128x128 with the shipped `shapes` sampling
    cp -r "$base" base128.tmp
    python - base128.tmp <<'PY'
import json, sys
folder = sys.argv[1]
declared = json.load(open(f"{folder}/eligen.json"))
json.dump({**declared, "size": [128, 128], "steps": 12}, open(f"{folder}/eligen.json", "w"), indent=2)
path = f"{folder}/scheduler/scheduler_config.json"
json.dump({**json.load(open(path)), "use_dynamic_shifting": False, "shift": 9.0}, open(path, "w"), indent=2)
PY
    mv base128.tmp base128
fi
train() {  # NAME ARGS...: one run, unless its result is written
    [ -d "$1/transformer" ] || [ -f "$1/lora.safetensors" ] && return 0
    local name=$1
    shift
    nice -n 5 eligen train --config "$here/shapes-eligen-continue.yaml" --model base128 --data lvf-data \
        --cache-dir cache-lvf -o "$name" --steps "$steps" --resolution 128 --save-every 0 "$@" "${train_args[@]}" \
        > "$name.log" 2>&1
}
train lvf-full
train lvf-lora --no-full --rank 32 --lr 1e-3
score() {  # NAME ARGS...: score one run's weights
    [ -f "$1/eval/results.json" ] || nice -n 5 eligen eval held128-64-layouts --model base128 --seeds 2 --cfg 3 \
        -o "$1/eval" "${@:2}" > "$1/eval.log" 2>&1
}
score lvf-full --transformer lvf-full/transformer/diffusion_pytorch_model.safetensors
score lvf-lora --lora lvf-lora/lora.safetensors

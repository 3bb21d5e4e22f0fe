#!/usr/bin/env bash
# The long run of the design chosen by docs/shapes.md's comparison: the 8x8 model (START, the `shapes` folder that
# shapes_ship.py wrote before this step) continued as a full fine-tune on a 16x16 token grid (128x128 scenes), in
# parts: every call continues the run in RUNS_DIR/long from its newest checkpoint (one every 50 steps, the last two
# kept), until its final transformer is written (RUNS_DIR/long/transformer).
#   bash recipes/shapes_long.sh RUNS_DIR START             (stop it at any time; the same command resumes it)
#   bash recipes/shapes_long.sh RUNS_DIR START --score     (score the newest checkpoint on the held-out layouts)
# The shipped run's length was changed three times, to fit the work periods it ran in: a cosine decay planned over
# 6,000 steps until step 1,450, over 5,000 until 1,550, over 4,000 until 1,950, then over 3,600 to the end. The
# four parts below repeat that (each part but the last stops with --stop-at; a resume is exact). One torch thread
# under nice by default (OMP_NUM_THREADS wins). For a trial in miniature (the test suite's), SCENES, HELD and PARTS
# (`STEPS:STOP_AT ...`) change the data and the parts, and TRAIN_ARGS is added to every `eligen train`.
set -euo pipefail
scenes=${SCENES:-8000}
held=${HELD:-64}
parts=${PARTS:-6000:1450 5000:1550 4000:1950 3600}
read -r -a train_args <<< "${TRAIN_ARGS:-}"
runs=$1
start=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$runs"
cd "$runs"
[ -d data128 ] || eligen data shapes -o data128 --n "$scenes" --seed 1 --size 128
[ -d held128-64 ] || eligen data shapes -o held128-64 --n "$held" --seed 999 --entities 2-3 --size 128 \
    --layouts held128-64-layouts
if [ ! -d warm128 ]; then  # the 8x8 model's weights, declared at 128x128
    cp -r "$start" warm128
    python -c "import json; p = 'warm128/eligen.json'; d = json.load(open(p)); d['size'] = [128, 128]
json.dump(d, open(p, 'w'), indent=2)"
fi
. "$here/shapes_checkpoints.sh"
if [ "${3:-}" = --score ]; then
    newest=$(ls -d long/checkpoints/step-* | tail -n 1)
    exec nice -n 10 eligen eval held128-64-layouts --model warm128 --transformer "$newest/transformer.safetensors" \
        --seeds 4 --steps 16 -o "long/eval/$(basename "$newest")"
fi
part() {  # STEPS [STOP_AT]: continue the run with a schedule over STEPS, up to STOP_AT (default: to the end)
    local at resume=()
    at=$(newest_step long)
    [ "$at" -lt "${2:-$1}" ] || return 0
    [ "$at" -gt 0 ] && resume=(--resume latest)
    nice -n 10 eligen train --config "$here/shapes-long.yaml" --model warm128 --data data128 \
        --cache-dir cache-warm128 -o long --steps "$1" ${2:+--stop-at "$2"} "${resume[@]}" "${train_args[@]}"
}
[ -d long/transformer ] && exit 0
for p in $parts; do
    part "${p%%:*}" $([[ $p == *:* ]] && echo "${p#*:}")
done

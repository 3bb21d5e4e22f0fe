#!/usr/bin/env bash
# A fourth stage on the 16x16 grid (docs/shapes.md, "Training at high noise"): the second stage's `more` weights (the
# shipped transformer, from recipes/shapes_more.sh) trained on as a full fine-tune on 12,000 fresh 128x128 scenes, with
# logit-normal timesteps shifted by 3 towards high noise (recipes/shapes-highnoise.yaml), where the shipped sampling
# schedule takes all of its steps. Every call continues the run in RUNS_DIR/highnoise from its newest checkpoint (one
# every 100 steps, the last two kept; every 400th also kept in highnoise/kept) until its final transformer is written.
#   bash recipes/shapes_highnoise.sh RUNS_DIR MORE_RUNS_DIR      (MORE_RUNS_DIR: where shapes_more.sh ran)
# One torch thread by default (OMP_NUM_THREADS wins). For a trial in miniature (the test suite's), SCENES, PARTS
# (`STEPS[:STOP_AT] ...`, default one part of 1,600 steps) and KEEP_EVERY change the data, the parts and which
# checkpoints are kept; TRAIN_ARGS is added to every `eligen train`.
set -euo pipefail
scenes=${SCENES:-12000}
parts=${PARTS:-1600}
every=${KEEP_EVERY:-400}
read -r -a train_args <<< "${TRAIN_ARGS:-}"
runs=$1
more=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$runs"
cd "$runs"
[ -d data128c ] || eligen data shapes -o data128c --n "$scenes" --seed 5 --size 128
. "$here/shapes_checkpoints.sh"
design_init highnoise "$more" more
train_parts highnoise "$here/shapes-highnoise.yaml" "$every" "$parts"

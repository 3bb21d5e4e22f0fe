#!/usr/bin/env bash
# A third stage on the 16x16 grid (docs/shapes.md, "A third stage"): the deeper design of the second stage (2 dual +
# 6 single blocks, from recipes/shapes_more.sh) trained on, as a full fine-tune on 12,000 fresh 128x128 scenes with
# a new cosine decay (recipes/shapes-deeper.yaml), in parts: every call continues the run in RUNS_DIR/deeper3 from
# its newest checkpoint (one every 100 steps, the last two kept; every 400th also kept in deeper3/kept) until its
# final transformer is written (RUNS_DIR/deeper3/transformer). Its result is not shipped: with the shipped sampling
# schedule it scored the same as the second stage's `more` weights, and it samples a third slower.
#   bash recipes/shapes_deeper.sh RUNS_DIR MORE_RUNS_DIR      (MORE_RUNS_DIR: where shapes_more.sh ran)
# The shipped run planned 1,600 steps, then, at its step-400 checkpoint, 3,000: the parts below repeat that (the
# first stops with --stop-at; a resume is exact). One torch thread by default (OMP_NUM_THREADS wins; the shipped run
# used two from step 1,100). For a trial in miniature (the test suite's), SCENES, PARTS (`STEPS:STOP_AT ...`) and
# KEEP_EVERY change the data, the parts and which checkpoints are kept; TRAIN_ARGS is added to every `eligen train`.
set -euo pipefail
scenes=${SCENES:-12000}
parts=${PARTS:-1600:400 3000}
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
design_init deeper3 "$more" deeper
train_parts deeper3 "$here/shapes-deeper.yaml" "$every" "$parts"

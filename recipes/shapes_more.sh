#!/usr/bin/env bash
# A second EliGen stage on the 16x16 grid (docs/shapes.md, "A second stage"): the long run's weights (START, the
# `shapes` folder shapes_ship.py wrote from it) trained on 12,000 fresh 128x128 scenes in two designs side by side,
# one torch thread each, for about the same wall time:
#   more     START as it is, 2,000 steps (recipes/shapes-more.yaml);
#   deeper   START with two more single blocks that start as the identity (recipes/shapes_deepen.py), 1,600 steps
#            (its steps cost about a third more).
# Every 400th checkpoint of each is kept (NAME/kept) and scored, like the final weights, on 32 held-out layouts
# (seed 0, 16 steps, CFG 3) into NAME/eval/step-N; `python scripts/shapes_compare_plot.py RUNS_DIR --design more
# --design deeper` draws the curves.
#   bash recipes/shapes_more.sh RUNS_DIR START        (stop it at any time; the same command resumes both runs)
# For a trial in miniature (the test suite's): SCENES, HELD, MORE_STEPS, DEEPER_STEPS and SCORE_EVERY change the
# data, the lengths and which checkpoints are kept; TRAIN_ARGS is added to every `eligen train`.
set -euo pipefail
scenes=${SCENES:-12000}
held=${HELD:-32}
every=${SCORE_EVERY:-400}
read -r -a train_args <<< "${TRAIN_ARGS:-}"
runs=$1
start=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$runs"
cd "$runs"
[ -d data128b ] || eligen data shapes -o data128b --n "$scenes" --seed 4 --size 128
[ -d held128-32 ] || eligen data shapes -o held128-32 --n "$held" --seed 999 --entities 2-3 --size 128 \
    --layouts held128-32-layouts
[ -d more-init ] || cp -r "$start" more-init
[ -d deeper-init ] || python "$here/shapes_deepen.py" "$start" -o deeper-init --single 2

train() {  # NAME STEPS: train (or resume) one design until its final weights are written
    local resume=()
    [ -d "$1/transformer" ] && return 0
    compgen -G "$1/checkpoints/step-*" > /dev/null && resume=(--resume latest)
    nice -n 5 eligen train --config "$here/shapes-more.yaml" --model "$1-init" --data data128b --cache-dir "cache-$1" \
        -o "$1" --steps "$2" "${resume[@]}" "${train_args[@]}" > "$1.log" 2>&1
}
. "$here/shapes_checkpoints.sh"
score() {  # NAME OUT [WEIGHTS]: score NAME's starting folder, with WEIGHTS as its transformer when given
    [ -f "$2/results.json" ] || nice -n 10 eligen eval held128-32-layouts --model "$1-init" ${3:+--transformer "$3"} \
        --seeds 1 --steps 16 --cfg 3 -o "$2" > "$2.log" 2>&1
}

train more "${MORE_STEPS:-2000}" & more=$!
train deeper "${DEEPER_STEPS:-1600}" & deeper=$!
while kill -0 "$more" 2> /dev/null || kill -0 "$deeper" 2> /dev/null; do
    keep_every more "$every"
    keep_every deeper "$every"
    sleep 20
done
wait "$more"
wait "$deeper"
for name in more deeper; do
    keep_every "$name" "$every"
    mkdir -p "$name/eval"
    score "$name" "$name/eval/step-000000"
    for kept in "$name"/kept/step-*.safetensors; do
        [ -f "$kept" ] && score "$name" "$name/eval/$(basename "$kept" .safetensors)" "$kept"
    done
    final=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['steps'])" "$name/config.json")
    score "$name" "$name/eval/$(printf 'step-%06d' "$final")" "$name/transformer/diffusion_pytorch_model.safetensors"
done

# Helpers shared by the shapes recipe's training scripts (sourced, not run): checkpoints, and training in parts.

newest_step() {  # RUN: the step of RUN's newest checkpoint, 0 when there is none
    local newest
    newest=$(ls -d "$1"/checkpoints/step-* 2>/dev/null | tail -n 1)
    if [ -z "$newest" ]; then echo 0; else echo $(( 10#${newest##*step-} )); fi
}

keep_every() {  # RUN EVERY: copy RUN's checkpoints at multiples of EVERY steps to RUN/kept before they are rotated out
    local checkpoint step
    mkdir -p "$1/kept"
    for checkpoint in "$1"/checkpoints/step-*; do
        [ -f "$checkpoint/transformer.safetensors" ] || continue
        step=$(( 10#${checkpoint##*step-} ))
        [ $(( step % $2 )) -eq 0 ] && [ ! -f "$1/kept/${checkpoint##*/}.safetensors" ] || continue
        cp "$checkpoint/transformer.safetensors" "$1/kept/tmp.safetensors"
        mv "$1/kept/tmp.safetensors" "$1/kept/${checkpoint##*/}.safetensors"
    done
}

design_init() {  # RUN MORE_DIR DESIGN: RUN-init, shapes_more.sh's folder of DESIGN with DESIGN's trained transformer
    [ -d "$1-init" ] && return 0
    cp -r "$2/$3-init" "$1-init.tmp"
    cp "$2/$3/transformer/"* "$1-init.tmp/transformer/"
    mv "$1-init.tmp" "$1-init"
}

train_part() {  # RUN CONFIG EVERY STEPS [STOP_AT]: continue `eligen train --config CONFIG` of the folder RUN-init on
    # data128c into RUN with a schedule over STEPS, up to STOP_AT (default: to the end), keeping every EVERY-th
    # checkpoint; extra `eligen train` arguments come from the array train_args
    local at trainer resume=()
    at=$(newest_step "$1")
    [ "$at" -lt "${5:-$4}" ] || return 0
    [ "$at" -gt 0 ] && resume=(--resume latest)
    nice -n 5 eligen train --config "$2" --model "$1-init" --data data128c --cache-dir "cache-$1" -o "$1" \
        --steps "$4" ${5:+--stop-at "$5"} "${resume[@]}" "${train_args[@]}" &
    trainer=$!
    while kill -0 "$trainer" 2> /dev/null; do
        keep_every "$1" "$3"
        sleep 20
    done
    wait "$trainer"
    keep_every "$1" "$3"
}

train_parts() {  # RUN CONFIG EVERY PARTS: train_part for each `STEPS[:STOP_AT]` of PARTS (space-separated), unless
    # RUN's final transformer is written
    local p
    [ -d "$1/transformer" ] && return 0
    for p in $4; do
        train_part "$1" "$2" "$3" "${p%%:*}" $([[ $p == *:* ]] && echo "${p#*:}")
    done
}

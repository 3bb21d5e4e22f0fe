# Checkpoint helpers shared by the shapes recipe's training scripts (sourced, not run).

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

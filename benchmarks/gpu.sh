#!/usr/bin/env bash
# The GPU measurement in one go (at most 8 minutes on one H100/H200-class GPU, nothing downloaded): FLUX.1-dev's
# architecture with random bf16 weights, 1024x1024, k = 5 entities with 512-token prompts. Prints one markdown
# report: per-step time and peak memory of plain FLUX, the reference (diffsynth), and eligen's dense, split, flex and
# default (auto) forms with entity_tokens max and auto; the first call of each form (FlexAttention's compile time);
# a kohya-format LoRA of FLUX.1-dev's shapes loaded and applied; an int8 transformer; --offload model. Then (at most 5
# more minutes) 3 entity LoRAs against one global LoRA of rank 16 and 64 at 1024x1024 (benchmarks/entity_lora.py).
#
#     bash benchmarks/gpu.sh            # from the repository root, with the project installed ('.[test]')
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python benchmarks/regional_attention.py --config full --sizes 1024 --entities 5 \
    --attention auto dense split flex --repeats 5 --steps 2 --extras
timeout 300 python benchmarks/entity_lora.py --config full --size 1024 --ranks 16 64 --steps 2 --repeats 3

#!/usr/bin/env bash
# What scripts/run_pretrain.sh, run_sft.sh and run_dpo.sh share: run a training module on NUM_GPUS
# GPUs of this machine (data parallel through torchrun), or on the CPU / one GPU without torchrun
# when NUM_GPUS is 1 or unset and no GPU is found.
#
#   scripts/launch.sh llm_course.training.pretrain --config gpt2-tiny-cpu
set -euo pipefail
cd "$(dirname "$0")/.."
MODULE="$1"
shift
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ -z "${NUM_GPUS:-}" ]]; then
  NUM_GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
fi
if [[ "$NUM_GPUS" -le 1 ]]; then
  exec "$PYTHON" -m "$MODULE" "$@"
fi
# OMP_NUM_THREADS: torchrun would set 1; a few threads per process keep data loading quick.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NUM_GPUS" -m "$MODULE" "$@"

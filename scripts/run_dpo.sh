#!/usr/bin/env bash
# Direct preference optimization (DPO) on NUM_GPUS GPUs of this machine (data parallel, DDP through torchrun), or on the
# CPU / one GPU without torchrun when NUM_GPUS is 1 or unset and no GPU is found.
#
#   NUM_GPUS=8 scripts/run_dpo.sh --config dpo-course-lm
#   scripts/run_dpo.sh --config dpo-tiny-cpu --set dpo.beta=0.2
#
# Every argument goes to `llm-course dpo` (see `llm-course dpo --help`). Running the
# same command again resumes from the run's latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ -z "${NUM_GPUS:-}" ]]; then
  NUM_GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
fi
if [[ "$NUM_GPUS" -le 1 ]]; then
  exec "$PYTHON" -m llm_course.training.dpo "$@"
fi
# OMP_NUM_THREADS: torchrun would set 1; a few threads per process keep data loading quick.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NUM_GPUS" \
  -m llm_course.training.dpo "$@"

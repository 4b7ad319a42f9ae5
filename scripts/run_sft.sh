#!/usr/bin/env bash
# Supervised fine-tuning (SFT) on NUM_GPUS GPUs of this machine (data parallel, DDP through torchrun), or on the
# CPU / one GPU without torchrun when NUM_GPUS is 1 or unset and no GPU is found.
#
#   NUM_GPUS=8 scripts/run_sft.sh --config sft-course-lm
#   scripts/run_sft.sh --config sft-tiny-cpu --set max_steps=50
#
# Every argument goes to `llm-course sft` (see `llm-course sft --help`). Running the
# same command again resumes from the run's latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ -z "${NUM_GPUS:-}" ]]; then
  NUM_GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
fi
if [[ "$NUM_GPUS" -le 1 ]]; then
  exec "$PYTHON" -m llm_course.training.sft "$@"
fi
# OMP_NUM_THREADS: torchrun would set 1; a few threads per process keep data loading quick.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NUM_GPUS" \
  -m llm_course.training.sft "$@"

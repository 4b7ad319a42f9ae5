#!/usr/bin/env bash
# Direct preference optimization (DPO) on NUM_GPUS GPUs of this machine (data parallel, DDP through torchrun), or on the
# CPU / one GPU without torchrun when NUM_GPUS is 1 or unset and no GPU is found.
#
#   NUM_GPUS=8 scripts/run_dpo.sh --config dpo-course-lm
#   scripts/run_dpo.sh --config dpo-tiny-cpu --set dpo.beta=0.2
#
# Every argument goes to `llm-course dpo` (see `llm-course dpo --help`). Running the
# same command again resumes from the run's latest checkpoint.
exec "$(dirname "$0")/launch.sh" llm_course.training.dpo "$@"

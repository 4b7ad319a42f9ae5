#!/usr/bin/env bash
# Pretrain on NUM_GPUS GPUs of this machine (data parallel, DDP through torchrun), or on the
# CPU / one GPU without torchrun when NUM_GPUS is 1 or unset and no GPU is found.
#
#   NUM_GPUS=8 scripts/run_pretrain.sh --config gpt2-124m
#   scripts/run_pretrain.sh --config gpt2-tiny-cpu --set max_steps=50
#
# Every argument goes to `llm-course pretrain` (see `llm-course pretrain --help`). Running the
# same command again resumes from the run's latest checkpoint.
exec "$(dirname "$0")/launch.sh" llm_course.training.pretrain "$@"

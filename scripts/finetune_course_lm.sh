#!/usr/bin/env bash
# Stage 5's measured effect: held-out task accuracy of course-lm before fine-tuning, after SFT
# and after DPO, on the course's own generated tasks (llm_course.data.tasks). On one GPU this
# takes a few minutes; everything it writes goes to $OUT (default results/finetune/).
#
#   scripts/finetune_course_lm.sh
#   OUT=results/h200/finetune scripts/finetune_course_lm.sh
#   S="--set max_steps=2 --set device=cpu --set precision=fp32"; head -16 runs/tasks/dpo_val.jsonl > /tmp/p.jsonl
#   SFT_SET="$S" DPO_SET="$S" EVAL_LIMIT=16 PAIRS=/tmp/p.jsonl scripts/finetune_course_lm.sh   # a dry run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-results/finetune}"
TASKS=runs/tasks                       # where configs/train/sft-course-lm.yaml and dpo-course-lm.yaml read
PAIRS="${PAIRS:-$TASKS/dpo_val.jsonl}"  # held-out preference pairs
LIMIT=()
[[ -n "${EVAL_LIMIT:-}" ]] && LIMIT=(--limit "$EVAL_LIMIT")
mkdir -p "$OUT"
evaluate() {  # evaluate MODEL NAME [more options]
  local model="$1" name="$2"; shift 2
  "$PYTHON" -m llm_course.evaluation --model "$model" --eval "$TASKS/eval.jsonl" "${LIMIT[@]}" "$@" --out "$OUT/$name.json"
}
"$PYTHON" -m llm_course.data.tasks --out "$TASKS" --sft 60000
evaluate models/course-lm pretrained --pairs "$PAIRS"
"$PYTHON" -m llm_course.cli sft --config sft-course-lm --no-resume ${SFT_SET:-}
cp runs/sft-course-lm/log.csv "$OUT/sft_log.csv"
evaluate runs/sft-course-lm/model sft --pairs "$PAIRS"
"$PYTHON" -m llm_course.cli dpo --config dpo-course-lm --no-resume ${DPO_SET:-}
cp runs/dpo-course-lm/log.csv "$OUT/dpo_log.csv"
evaluate runs/dpo-course-lm/model dpo --pairs "$PAIRS"
evaluate runs/dpo-course-lm/model dpo_vs_sft --pairs "$PAIRS" --ref-model runs/sft-course-lm/model
"$PYTHON" - "$OUT" <<'PY'
import json, sys, torch
from llm_course.bench.common import metadata
from llm_course.device import get_device
json.dump(metadata(get_device(), None, benchmark="finetune"), open(f"{sys.argv[1]}/meta.json", "w"), indent=1)
PY
"$PYTHON" -m llm_course.evaluation.report "$OUT"

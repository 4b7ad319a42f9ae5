"""``python -m llm_course.evaluation``: a model's held-out task accuracy (and preference accuracy), as a table.

    python -m llm_course.evaluation --model models/course-lm --eval runs/tasks/eval.jsonl --out before.json
    python -m llm_course.evaluation --model runs/sft/model --eval runs/tasks/eval.jsonl --out after_sft.json
    python -m llm_course.evaluation --model runs/dpo/model --eval runs/tasks/eval.jsonl \\
        --pairs runs/tasks/dpo_val.jsonl --ref-model runs/sft/model --beta 0.1 --out after_dpo.json

``--model`` is anything ``llm-course generate --model`` takes (a model folder, a config name
for random weights). The JSON file holds the whole result (``task_accuracy``'s dict, and
``preference`` when ``--pairs`` is given) with the model, the files and the settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_course.generation.loading import DTYPES



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder (or a config name: random weights)")
    p.add_argument("--eval", required=True, help="eval.jsonl of python -m llm_course.data.tasks")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N eval records")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=8, help="sample rows to show (default 8)")
    p.add_argument("--pairs", default=None, help="held-out preference pairs (dpo_val.jsonl): also preference accuracy")
    p.add_argument("--ref-model", default=None, help="the reference model of --pairs (the model DPO started from)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta for --pairs (default 0.1)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the GPU if there is one)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float32 on the CPU, the checkpoint's own on a GPU")


def format_table(result: dict) -> str:
    """The per-task accuracies, the overall one, and the sample rows, as plain text."""
    lines = [f"{'task':<15} {'correct':>7} {'total':>6} {'accuracy':>9}"]
    for task, r in sorted(result["per_task"].items()):
        lines.append(f"{task:<15} {r['correct']:>7} {r['total']:>6} {r['accuracy']:>9.1%}")
    lines.append(f"{'all':<15} {result['correct']:>7} {result['total']:>6} {result['accuracy']:>9.1%}")
    if result.get("samples"):
        lines.append("")
        for s in result["samples"]:
            mark = "ok " if s["correct"] else "BAD"
            lines.append(f"[{mark}] {s['prompt']!r} -> {s['completion']!r} (answer {s['answer']!r})")
    pref = result.get("preference")
    if pref:
        lines.append("")
        lines.append(f"preference accuracy {pref['accuracy']:.1%} on {pref['total']} held-out pairs "
                     f"(mean reward margin {pref['margin']:+.3f}, beta {pref['beta']})")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from llm_course.data.tasks import load_eval, read_records
    from llm_course.evaluation.accuracy import task_accuracy
    from llm_course.evaluation.preference import preference_accuracy
    from llm_course.generation.loading import device_and_dtype, load_for_generation, warn

    device, dtype = device_and_dtype(args.device, args.dtype)
    try:
        records = load_eval(args.eval)[: args.limit]
        pairs = read_records(args.pairs, ("prompt", "chosen", "rejected")) if args.pairs else None
        loaded = load_for_generation(args.model, device=device, dtype=dtype)
        ref = load_for_generation(args.ref_model, device=device, dtype=dtype).model if args.ref_model else None
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if loaded.random_weights:
        warn(loaded.source)
    result = task_accuracy(loaded.model, loaded.tokenizer, records, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, device=device, n_samples=args.samples)  # fmt: skip
    if pairs is not None:
        if ref is None:
            warn("--pairs without --ref-model: the rewards are the policy's log-probabilities alone")
        pref = preference_accuracy(loaded.model, ref, pairs, args.beta, tokenizer=loaded.tokenizer, device=device)
        result["preference"] = {**pref, "beta": args.beta, "pairs": str(args.pairs), "ref_model": args.ref_model}
    result["settings"] = {"model": str(args.model), "eval": str(args.eval), "max_new_tokens": args.max_new_tokens,
                          "decoding": "greedy", "device": str(device)}  # fmt: skip
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_course.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

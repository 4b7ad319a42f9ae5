"""The before/after table of stage 5: held-out task accuracy of the pretrained, SFT and DPO models.

    python -m llm_course.evaluation.report results/h200/finetune

reads, from that folder, what ``scripts/finetune_course_lm.sh`` wrote there:

* ``pretrained.json``, ``sft.json``, ``dpo.json`` -- ``python -m llm_course.evaluation`` of each
  model on the same held-out prompts, each with ``--pairs`` and no reference: the share of
  held-out pairs where the model gives the correct answer a higher log-probability than
  the plausible wrong one;
* ``dpo_vs_sft.json`` -- the DPO model's *preference accuracy* in DPO's own sense: its implicit
  reward ``beta * (log pi(y|x) - log pi_sft(y|x))`` higher for the chosen answer (reference =
  the SFT model it started from);
* ``sft_log.csv``, ``dpo_log.csv`` -- the trainer's logs of the two runs,

and writes ``summary.json`` (what notebook 05a reads), ``summary.md`` (the table),
``accuracy.png`` (accuracy per task and stage) and ``curves.png`` (the two runs' losses, and
DPO's reward accuracy).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

STAGES = ("pretrained", "sft", "dpo")
TITLES = {"pretrained": "pretrained (course-lm)", "sft": "after SFT", "dpo": "after DPO"}


def _stage(result: dict) -> dict:
    pref = result.get("preference") or {}
    return {
        "accuracy": result["accuracy"],
        "correct": result["correct"],
        "total": result["total"],
        "per_task": {task: v["accuracy"] for task, v in sorted(result["per_task"].items())},
        "prefers_correct": pref.get("accuracy"),  # log p(chosen) > log p(rejected), no reference
        "model": result.get("settings", {}).get("model"),
    }


def summarize(folder: Path) -> dict:
    results = {s: json.loads((folder / f"{s}.json").read_text()) for s in STAGES}
    summary = {s: _stage(results[s]) for s in STAGES}
    vs_sft = folder / "dpo_vs_sft.json"
    if vs_sft.is_file():
        pref = json.loads(vs_sft.read_text())["preference"]
        summary["dpo"]["preference_accuracy"] = pref["accuracy"]  # DPO's implicit reward, reference = SFT
        summary["dpo"]["reward_margin"] = pref["margin"]
    summary["samples"] = [dict(stage=s, **{k: row[k] for k in ("task", "prompt", "completion", "correct")})
                          for s in STAGES for row in results[s]["samples"]]  # fmt: skip
    meta = folder / "meta.json"
    summary["meta"] = json.loads(meta.read_text()) if meta.is_file() else {}
    return summary


def table(summary: dict) -> str:
    tasks = sorted(summary["pretrained"]["per_task"])
    head = "| held-out accuracy | " + " | ".join(TITLES[s] for s in STAGES) + " |"
    lines = [head, "|---" * (len(STAGES) + 1) + "|"]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(f"{summary[s]['per_task'].get(task, float('nan')):.1%}" for s in STAGES) + " |")
    lines.append("| **all** (" + str(summary["pretrained"]["total"]) + " prompts) | "
                 + " | ".join(f"**{summary[s]['accuracy']:.1%}**" for s in STAGES) + " |")  # fmt: skip
    lines.append("| prefers the correct answer (held-out pairs, log p) | "
                 + " | ".join("-" if summary[s]["prefers_correct"] is None else f"{summary[s]['prefers_correct']:.1%}" for s in STAGES) + " |")  # fmt: skip
    if "preference_accuracy" in summary["dpo"]:
        lines.append(f"| DPO preference accuracy (implicit reward vs the SFT model) | - | - | {summary['dpo']['preference_accuracy']:.1%} |")
    return "\n".join(lines)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def charts(summary: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(summary["pretrained"]["per_task"]) + ["all"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.27
    for j, s in enumerate(STAGES):
        values = [summary[s]["per_task"].get(t, 0.0) for t in tasks[:-1]] + [summary[s]["accuracy"]]
        ax.bar([i + j * width for i in range(len(tasks))], [100 * v for v in values], width, label=TITLES[s], color=f"C{j}")
    ax.set_xticks([i + width for i in range(len(tasks))])
    ax.set_xticklabels(tasks, rotation=20)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("course-lm on the course's tasks: before and after fine-tuning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = [folder / "accuracy.png"]
    fig.savefig(out[0], dpi=110)
    plt.close(fig)

    sft, dpo = _read_log(folder / "sft_log.csv"), _read_log(folder / "dpo_log.csv")
    if sft or dpo:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for ax, rows, name in ((axes[0], sft, "SFT"), (axes[1], dpo, "DPO")):
            ax.plot(*_series(rows, "loss"), label="train")
            ax.plot(*_series(rows, "val_loss"), "o-", label="held-out")
            ax.set_title(f"{name} loss")
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
        axes[2].plot(*_series(dpo, "reward_accuracy"), label="train pairs")
        axes[2].plot(*_series(dpo, "val_reward_accuracy"), "o-", label="held-out pairs")
        axes[2].set_title("DPO reward accuracy")
        axes[2].set_xlabel("step")
        axes[2].legend(fontsize=8)
        fig.tight_layout()
        out.append(folder / "curves.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm_course.evaluation.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("folder", help="the folder scripts/finetune_course_lm.sh wrote")
    folder = Path(p.parse_args(argv).folder)
    missing = [f"{s}.json" for s in STAGES if not (folder / f"{s}.json").is_file()]
    if missing:
        print(f"error: {folder} has no {', '.join(missing)}: run scripts/finetune_course_lm.sh first")
        return 2
    summary = summarize(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = table(summary)
    (folder / "summary.md").write_text(text + "\n")
    print(text)
    print("wrote", ", ".join(str(p) for p in [folder / "summary.json", folder / "summary.md", *charts(summary, folder)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

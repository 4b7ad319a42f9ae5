"""What ``llm-course bench model`` reports: its rows, the CSV, the printed table, the targets and the charts.

Kept apart from the measuring (``llm_course.bench.model``) so that the files of a run can be
read back and drawn again (``llm-course bench model --redraw --out DIR``) without a GPU.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from llm_course.bench.common import ceilings_from_meta, read_meta
from llm_course.measure.peaks import lookup
from llm_course.measure.roofline import Ceilings, RooflinePoint, plot_roofline

# the paths a benchmark run can measure, and what each one is (the CSV's ``path``)
PATHS = {
    "torch": "course model, torch backend, eager loop",
    "triton": "course model, Triton backend, eager loop",
    "graph-torch": "course model, torch backend, decode step in a CUDA graph",
    "graph-triton": "course model, Triton backend, decode step in a CUDA graph",
    "graph-triton+cublas": "course model, Triton kernels with cuBLAS matmuls, decode step in a CUDA graph",
    "compile": "course model, torch backend, decode step under torch.compile(mode='reduce-overhead')",
    "hf-generate": "transformers generate (greedy, default cache), same weights",
    "baseline": "plain PyTorch static-cache decoder (SDPA), eager",
    "baseline-graph": "plain PyTorch static-cache decoder, decode step in a CUDA graph",
    "baseline-compile": "plain PyTorch static-cache decoder under torch.compile(mode='reduce-overhead')",
}
COURSE_PATHS = ("torch", "triton", "graph-torch", "graph-triton", "graph-triton+cublas", "compile")  # the course's own
CSV_NAME, META_NAME, SPEED_PNG, ROOFLINE_PNG = "model.csv", "model_meta.json", "model_speed.png", "model_roofline.png"


@dataclass
class GenRow:
    """One model, batch size and path: the speed of prefill and decode."""

    model: str
    batch: int
    path: str
    dtype: str
    prefill: int  # prompt tokens per row
    new_tokens: int  # tokens generated per row (the first from the prefill's logits)
    params: float  # parameters (a tied matrix once)
    weight_bytes: float  # bytes of weights one decode step reads
    kv_bytes: float  # bytes of KV cache one decode step reads, on average over the decode
    step_flops: float  # FLOPs of one decode step (matmuls and attention), on average
    setup_s: float = math.nan  # building the path, warm-up, capture or compilation
    prefill_ms: float = math.nan  # one prefill of the whole batch, wall time
    wall_ms: float = math.nan  # one decode step, wall time in a loop (host included)
    gpu_ms: float = math.nan  # one decode step, the kernels alone (a CUDA graph's replay)
    tok_s: float = math.nan  # batch * 1000 / wall_ms
    e2e_tok_s: float = math.nan  # batch * new_tokens / (prefill + decode)
    frac_bw: float = math.nan  # (weight_bytes + kv_bytes) / wall time / copy bandwidth
    frac_bw_gpu: float = math.nan  # the same with gpu_ms
    intensity: float = math.nan  # step_flops / step bytes
    tflops: float = math.nan  # step_flops / wall time
    note: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and math.isfinite(self.wall_ms)

    @property
    def step_bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes


FIELDS = [f.name for f in dataclasses.fields(GenRow)]
_FLOATS = {f.name for f in dataclasses.fields(GenRow) if f.type in ("float", float)}
_INTS = {f.name for f in dataclasses.fields(GenRow) if f.type in ("int", int)}


def fastest_course_row(rows: list[GenRow], model: str, batch: int) -> GenRow | None:
    """The measured course path with the most decode tokens/s for this model and batch, if any."""
    mine = [r for r in rows if r.model == model and r.batch == batch and r.path in COURSE_PATHS and r.ok]
    return max(mine, key=lambda r: r.tok_s, default=None)


def format_row(r: GenRow) -> str:
    head = f"{r.model:<11} B={r.batch:<3} {r.path:<20}"
    if not r.ok:
        return f"{head} {'failed: ' if not r.error.startswith('skipped') else ''}{r.error[:110]}"
    gpu = f"{r.gpu_ms:7.3f}" if math.isfinite(r.gpu_ms) else f"{'-':>7}"
    frac = f"{100 * r.frac_bw:5.1f}%" if math.isfinite(r.frac_bw) else f"{'-':>6}"
    return (f"{head} {r.tok_s:9.1f} tok/s {r.wall_ms:8.3f} {gpu} ms/step {frac} of copy   "
            f"prefill {r.prefill_ms:8.2f} ms  e2e {r.e2e_tok_s:8.1f} tok/s  setup {r.setup_s:5.1f} s")  # fmt: skip


def format_table(rows: list[GenRow]) -> str:
    head = (f"{'model':<11} {'batch':<5} {'path':<20} {'tok/s':>9} {'wall ms':>8} {'gpu ms':>7} {'of copy':>7} "
            f"{'prefill ms':>10} {'e2e tok/s':>9}  note")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (_size(r), r.model, r.batch, list(PATHS).index(r.path))):
        if not r.ok:
            lines.append(f"{r.model:<11} {r.batch:<5} {r.path:<20} {r.error[:100]}")
            continue
        fastest = fastest_course_row(rows, r.model, r.batch)
        mark = " *" if fastest is r else ""
        gpu = f"{r.gpu_ms:7.3f}" if math.isfinite(r.gpu_ms) else f"{'-':>7}"
        frac = f"{100 * r.frac_bw:6.1f}%" if math.isfinite(r.frac_bw) else f"{'-':>7}"
        lines.append(f"{r.model:<11} {r.batch:<5} {r.path + mark:<20} {r.tok_s:>9.1f} {r.wall_ms:>8.3f} {gpu} {frac} "
                     f"{r.prefill_ms:>10.2f} {r.e2e_tok_s:>9.1f}  {r.note}")  # fmt: skip
    lines.append("(* the course's fastest path for that model and batch; wall ms: per decode step, host included; "
                 "gpu ms: the step's kernels alone)")  # fmt: skip
    return "\n".join(lines)


def _size(r: GenRow) -> float:
    """Tables and charts list the models by size (a row without a model last)."""
    return r.params if math.isfinite(r.params) else math.inf


def check_targets(rows: list[GenRow]) -> list[tuple[str, str, str]]:
    """(target, PASS/FAIL/n/a, numbers): the course's generation targets, reported, not asserted."""
    out = []

    def get(model, batch, path):
        return next((r for r in rows if (r.model, r.batch, r.path) == (model, batch, path) and r.ok), None)

    for model in ("qwen2-0.5b", "qwen2-7b"):
        name = f"{model} batch 1: the course's fastest decode >= the compiled baseline (tokens/s)"
        best, base = fastest_course_row(rows, model, 1), get(model, 1, "baseline-compile")
        if best is None or base is None:
            out.append((name, "n/a", "not measured"))
        else:
            out.append((name, "PASS" if best.tok_s >= base.tok_s else "FAIL",
                        f"{best.path} {best.tok_s:.1f} vs baseline-compile {base.tok_s:.1f} tok/s "
                        f"({best.tok_s / base.tok_s:.2f}x)"))  # fmt: skip
    name = "qwen2-7b batch 1: the course's fastest decode >= 55% of copy bandwidth"
    best = fastest_course_row(rows, "qwen2-7b", 1)
    if best is None or not math.isfinite(best.frac_bw):
        out.append((name, "n/a", "not measured"))
    else:
        out.append((name, "PASS" if best.frac_bw >= 0.55 else "FAIL",
                    f"{best.path}: {100 * best.frac_bw:.1f}% (kernels alone {100 * best.frac_bw_gpu:.1f}%)"))  # fmt: skip
    name = "qwen2-0.5b batch 1: the course's fastest decode >= 5x transformers generate (tokens/s)"
    best, hf = fastest_course_row(rows, "qwen2-0.5b", 1), get("qwen2-0.5b", 1, "hf-generate")
    if best is None or hf is None:
        out.append((name, "n/a", "not measured"))
    else:
        ratio = best.tok_s / hf.tok_s
        out.append((name, "PASS" if ratio >= 5 else "FAIL",
                    f"{best.path} {best.tok_s:.1f} vs {hf.tok_s:.1f} tok/s = {ratio:.1f}x "
                    f"(end to end {best.e2e_tok_s / hf.e2e_tok_s:.1f}x)"))  # fmt: skip
    return out


def write_csv(rows: list[GenRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()})
    return path


def read_csv(path: Path) -> list[GenRow]:
    rows = []
    with Path(path).open(newline="") as f:
        for rec in csv.DictReader(f):
            kw = {}
            for k, v in rec.items():
                if k in _FLOATS:
                    kw[k] = float(v) if v != "" else math.nan
                elif k in _INTS:
                    kw[k] = int(v)
                elif k in FIELDS:
                    kw[k] = v
            rows.append(GenRow(**kw))
    return rows


def speed_chart(rows: list[GenRow], path: Path, title: str = "") -> Path:
    """Two panels, one group of bars per (model, batch), one bar per path: decode tokens/s (log
    scale) and the fraction of the copy bandwidth a decode step reaches (wall time)."""
    from matplotlib.figure import Figure

    ordered = sorted(rows, key=lambda r: (_size(r), r.model, r.batch))
    groups = list(dict.fromkeys((r.model, r.batch) for r in ordered))
    paths = [p for p in PATHS if any(r.path == p for r in rows)]
    fig = Figure(figsize=(max(8, 1.6 * len(groups) * max(1, len(paths)) / 4), 7))
    axes = fig.subplots(2, 1)
    width = 0.8 / max(1, len(paths))
    for ax, field, label in zip(axes, ("tok_s", "frac_bw"), ("decode tokens/s (wall)", "fraction of copy bandwidth")):
        for i, p in enumerate(paths):
            vals = []
            for g in groups:
                r = next((r for r in rows if (r.model, r.batch, r.path) == (*g, p) and r.ok), None)
                vals.append(getattr(r, field) if r is not None else math.nan)
            ax.bar([j + i * width for j in range(len(groups))], vals, width, label=p, color=f"C{i % 10}")
        ax.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{m}\nbatch {b}" for m, b in groups], fontsize=8)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if field == "tok_s" and any(r.ok for r in rows):
            ax.set_yscale("log")
        if field == "frac_bw":
            ax.axhline(1.0, ls="--", color="gray", lw=1)
            ax.set_ylim(0, 1.1)
    axes[0].legend(fontsize=7, ncol=min(5, max(1, len(paths))))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def roofline_chart(rows: list[GenRow], path: Path, ceilings: Ceilings, title: str = "") -> Path:
    """The decode step of the course's fastest path and of the compiled baseline, per model and batch."""
    from matplotlib.figure import Figure

    points = []
    for model, batch in dict.fromkeys((r.model, r.batch) for r in rows):
        baseline = next((x for x in rows if (x.model, x.batch, x.path) == (model, batch, "baseline-compile") and x.ok), None)
        for r in (fastest_course_row(rows, model, batch), baseline):
            if r is not None and r.step_flops > 0 and r.step_bytes > 0:
                points.append(RooflinePoint(f"{model} B={batch} {r.path}", r.step_flops, r.step_bytes, r.wall_ms / 1e3))
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    plot_roofline(ceilings, points, datasheet=lookup(ceilings.name), ax=ax,
                  title=title or f"Decode steps on the roofline: {ceilings.name}")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def draw_charts(out_dir: Path) -> list[Path]:
    """Both charts from ``out_dir``'s model.csv and model_meta.json (no measuring)."""
    rows = read_csv(out_dir / CSV_NAME)
    meta = read_meta(out_dir / META_NAME)
    label = f"{meta['device']}, {meta.get('dtype', '')}, prefill {meta.get('prefill')}, {meta.get('new_tokens')} new tokens"
    paths = [speed_chart(rows, out_dir / SPEED_PNG, title=f"Generation: {label}")]
    ceilings = ceilings_from_meta(meta)
    if ceilings is not None and any(r.ok for r in rows):
        paths.append(roofline_chart(rows, out_dir / ROOFLINE_PNG, ceilings))
    return paths

"""Write, print, chart and compare step profiles.

Files of one profile (``write_profile``): ``kernels.csv``, ``categories.csv``, ``ops.csv``
(the tables of ``tables.py``), ``summary.json`` (the setting, the times, the ceilings,
the top rows and the "what limits it" line), ``trace.json`` (open it at
https://ui.perfetto.dev or chrome://tracing), ``categories.png`` (time by category) and
``roofline.png`` (each op and phase on the roofline of the ceilings).

``compare_profiles`` puts several backends side by side: the categories in one table,
each backend's top kernels, and one line per backend saying what limits it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from llm_course.measure.units import format_si
from llm_course.profiling.events import short_name
from llm_course.profiling.tables import CATEGORY_FIELDS, KERNEL_FIELDS, OP_FIELDS


def _csv(rows, fields: list[str], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            d = dataclasses.asdict(r)
            w.writerow({k: ("" if isinstance(d[k], float) and math.isnan(d[k]) else d[k]) for k in fields})
    return path


def _clean(x):
    """JSON has no NaN: None instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def summary(p, top_k: int = 10) -> dict:
    """The profile as a JSON-ready dict (the tables cut to ``top_k`` kernels)."""
    d = {k: getattr(p, k) for k in ("model", "backend", "device", "time_kind", "batch_size", "seq_len",
                                    "micro_batches", "precision", "steps", "wall_ms", "wall_unprofiled_ms",
                                    "busy_ms", "no_estimate_share", "unmatched_ranges", "loss")}  # fmt: skip
    d["ceilings"] = dataclasses.asdict(p.ceilings) if p.ceilings is not None else None
    d["categories"] = {c.category: {"ms_per_step": c.time_us / 1e3 / p.steps, "share": c.share} for c in p.categories}
    d["top_kernels"] = [dataclasses.asdict(k) for k in p.kernels[:top_k]]
    d["ops"] = [dataclasses.asdict(o) for o in p.ops]
    d["no_estimate_kernels"] = [k.name for k in p.kernels if not k.flops_source]
    d["limits"] = limits_line(p)
    return _clean(d)


def write_profile(p, out_dir, prof=None, charts: bool = True) -> dict[str, str]:
    """Write the tables, the summary, the trace (from the profiler ``prof``) and the charts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "kernels": _csv(p.kernels, KERNEL_FIELDS, out / "kernels.csv"),
        "categories": _csv(p.categories, CATEGORY_FIELDS, out / "categories.csv"),
        "ops": _csv(p.ops, OP_FIELDS, out / "ops.csv"),
    }
    if prof is not None:
        files["trace"] = out / "trace.json"
        prof.export_chrome_trace(str(files["trace"]))
        p.trace_path = files["trace"]
    if charts:
        import matplotlib.pyplot as plt

        fig = category_chart([p])
        fig.savefig(out / "categories.png", dpi=120)
        plt.close(fig)
        files["categories_chart"] = out / "categories.png"
        fig = roofline_chart(p)
        if fig is not None:
            fig.savefig(out / "roofline.png", dpi=120)
            plt.close(fig)
            files["roofline_chart"] = out / "roofline.png"
    p.files = {k: str(v) for k, v in files.items()}
    s = summary(p)
    s["files"] = {k: Path(v).name for k, v in p.files.items()}
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")
    p.files["summary"] = str(out / "summary.json")
    return p.files


# --- text -------------------------------------------------------------------------------------


def _num(x: float, fmt: str) -> str:
    """``x`` formatted, or "-" right-aligned to the same width when it is unknown (NaN)."""
    width = int(fmt.split(".")[0] or 0)
    return f"{'-':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_kernels(p, top_k: int = 15) -> str:
    unit = "GPU" if p.time_kind == "device" else "CPU"
    head = (f"{'#':>2}  {'kernel' if unit == 'GPU' else 'CPU op':<48} {'category':<12} {'op':<22} {'calls':>6} "
            f"{unit + ' ms/step':>12} {'mean us':>9} {'share':>6} {'FLOP/B':>8} {'TFLOP/s':>8} {'bound':>8}")  # fmt: skip
    lines = [head]
    for i, k in enumerate(p.kernels[:top_k], 1):
        lines.append(f"{i:>2}  {short_name(k.name, 48):<48} {k.category:<12} {k.op or '-':<22} {k.calls:>6} "
                     f"{k.total_us / 1e3 / p.steps:>12.3f} {k.mean_us:>9.1f} {k.share:>6.1%} {_num(k.intensity, '8.1f')} "
                     f"{_num(k.tflops, '8.3g')} {k.bound or 'no est.':>8}")  # fmt: skip
    return "\n".join(lines)


def format_categories(p) -> str:
    lines = [f"{'category':<14} {'ms/step':>9} {'share':>7}"]
    for c in p.categories:
        if c.time_us > 0:
            lines.append(f"{c.category:<14} {c.time_us / 1e3 / p.steps:>9.3f} {c.share:>7.1%}")
    return "\n".join(lines)


def format_ops(p) -> str:
    lines = [f"{'op':<28} {'phase':<9} {'calls':>6} {'ms/step':>9} {'FLOPs':>10} {'FLOP/B':>8} {'TFLOP/s':>8} "
             f"{'GB/s':>8} {'bound':>8} {'of roof':>8}"]  # fmt: skip
    for o in p.ops:
        lines.append(f"{o.op:<28} {o.phase:<9} {o.calls:>6} {o.time_us / 1e3 / p.steps:>9.3f} "
                     f"{format_si(o.flops / p.steps, 'FLOP') if o.flops else '-':>10} {_num(o.intensity, '8.1f')} "
                     f"{_num(o.tflops, '8.3g')} {_num(o.gbs, '8.3g')} {o.bound or '-':>8} "
                     f"{_num(o.fraction_of_roof, '8.0%')}")  # fmt: skip
    return "\n".join(lines)


def format_profile(p, top_k: int = 15) -> str:
    """The whole report: setting, times, categories, top kernels, ops on the roofline, limits."""
    unit = "GPU" if p.time_kind == "device" else "CPU"
    parts = [
        f"{p.model} on the {p.backend} backend, {p.device}: {p.micro_batches} x {p.batch_size} sequences of "
        f"{p.seq_len} tokens per step, {p.precision}, {p.steps} profiled step(s)",
        f"wall {p.wall_ms:.2f} ms/step ({p.wall_unprofiled_ms:.2f} without the profiler), {unit} busy "
        f"{p.busy_ms:.2f} ms/step ({p.busy_ms / p.wall_ms:.0%})" if p.wall_ms else "",
        "", format_categories(p), "", format_kernels(p, top_k), "", format_ops(p), "",
        f"no FLOPs estimate for {p.no_estimate_share:.0%} of the {unit} time (kernels marked 'no est.'; "
        f"their ops are in the ops table when they ran inside one)",
    ]  # fmt: skip
    if p.ceilings is not None:
        parts.append(f"roofline: {p.ceilings}")
    parts.append("what limits it: " + limits_line(p))
    if p.trace_path:
        parts.append(f"trace: {p.trace_path} (open it at https://ui.perfetto.dev or chrome://tracing)")
    return "\n".join(parts)


def limits_line(p, n_categories: int = 3, n_kernels: int = 3) -> str:
    """One line: the top categories, and whether the top kernels are compute- or memory-bound."""
    cats = sorted((c for c in p.categories if c.time_us > 0), key=lambda c: c.time_us, reverse=True)
    text = ", ".join(f"{c.category} {c.share:.0%}" for c in cats[:n_categories])
    ks = []
    for k in p.kernels[:n_kernels]:
        if k.bound:
            ks.append(f"{short_name(k.name, 40)} ({k.category}, {k.bound}-bound, {k.fraction_of_roof:.0%} of its roof)")
        else:
            ks.append(f"{short_name(k.name, 40)} ({k.category}, no FLOPs estimate)")
    bound_ops = [o for o in p.ops if o.bound]
    if bound_ops:
        t = sum(o.time_us for o in bound_ops) or 1.0
        mem = sum(o.time_us for o in bound_ops if o.bound == "memory") / t
        ops_text = f"; of the time in the course's ops, {mem:.0%} is in memory-bound ones, {1 - mem:.0%} in compute-bound"
    else:
        ops_text = ""
    return f"{p.backend}: {text}; top kernels: " + "; ".join(ks) + ops_text


# --- charts -----------------------------------------------------------------------------------


def category_chart(profiles):
    """Horizontal bars: ms per step by category, one bar per profile (backend) in each category."""
    import matplotlib.pyplot as plt
    import numpy as np

    cats = [c.category for c in profiles[0].categories if any(
        next(x for x in p.categories if x.category == c.category).time_us > 0 for p in profiles)]  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(cats) * len(profiles) + 1.5))
    h = 0.8 / len(profiles)
    y = np.arange(len(cats))
    unit = "GPU" if profiles[0].time_kind == "device" else "CPU"
    for i, p in enumerate(profiles):
        by = {c.category: c for c in p.categories}
        ms = [by[c].time_us / 1e3 / p.steps for c in cats]
        bars = ax.barh(y + i * h, ms, height=h, label=f"{p.backend} ({p.wall_ms:.1f} ms/step)")
        for b, c in zip(bars, cats):
            ax.annotate(f"{by[c].share:.0%}", (b.get_width(), b.get_y() + b.get_height() / 2), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(y + h * (len(profiles) - 1) / 2, cats)
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per step ({unit} time; idle = wall - busy)")
    ax.set_title(f"{profiles[0].model}: where a training step's time goes")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def roofline_chart(p, max_points: int = 12):
    """The ops (by phase) with a FLOPs estimate on the roofline of ``p.ceilings``; None without either."""
    from llm_course.measure.peaks import lookup
    from llm_course.measure.roofline import RooflinePoint, plot_roofline

    if p.ceilings is None:
        return None
    pts = [RooflinePoint(f"{o.op} {o.phase[:3]}", o.flops, o.bytes, o.time_us * 1e-6)
           for o in p.ops if o.flops > 0 and o.bytes > 0 and o.time_us > 0][:max_points]  # fmt: skip
    if not pts:
        return None
    return plot_roofline(p.ceilings, pts, datasheet=lookup(p.device),
                         title=f"{p.model}, {p.backend} backend: ops of a training step on the roofline")  # fmt: skip


# --- comparing backends -----------------------------------------------------------------------


def format_comparison(profiles, top_k: int = 8) -> str:
    """Categories side by side, each backend's top kernels, and a 'what limits it' line per backend."""
    names = [p.backend for p in profiles]
    lines = [f"{profiles[0].model} on {profiles[0].device}: "
             + ", ".join(f"{p.backend} {p.wall_ms:.2f} ms/step" for p in profiles), ""]  # fmt: skip
    lines.append(f"{'category':<14}" + "".join(f"{n + ' ms':>14}{'share':>7}" for n in names))
    by = [{c.category: c for c in p.categories} for p in profiles]
    for c in profiles[0].categories:
        if all(b[c.category].time_us == 0 for b in by):
            continue
        lines.append(f"{c.category:<14}" + "".join(
            f"{b[c.category].time_us / 1e3 / p.steps:>14.3f}{b[c.category].share:>7.1%}" for b, p in zip(by, profiles)))
    for p in profiles:
        lines += ["", f"--- {p.backend}: top kernels", format_kernels(p, top_k)]
    lines += ["", "what limits each:"] + [limits_line(p) for p in profiles]
    return "\n".join(lines)


def write_comparison(profiles, out_dir) -> dict[str, str]:
    """``compare.txt``, ``compare.json`` and ``categories_compare.png`` in ``out_dir``."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.txt").write_text(format_comparison(profiles) + "\n", encoding="utf-8")
    (out / "compare.json").write_text(json.dumps([summary(p, top_k=5) for p in profiles], indent=2) + "\n",
                                      encoding="utf-8")  # fmt: skip
    fig = category_chart(profiles)
    fig.savefig(out / "categories_compare.png", dpi=120)
    plt.close(fig)
    return {k: str(out / k) for k in ("compare.txt", "compare.json", "categories_compare.png")}

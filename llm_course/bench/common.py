"""Pieces every benchmark script shares: one result row, timing without aborting,
CSV and metadata files, a printed table, and the charts.

A benchmark run writes, into its output folder:

* ``<name>.csv``  -- one row per (op, size, implementation) with every number
  (:class:`BenchRow`); a failed measurement is a row with its ``error`` set;
* ``<name>_meta.json`` -- the machine (GPU name, torch and triton versions, date) and
  the ceilings measured in the same run (one file per benchmark, so that
  benchmarks sharing an output folder keep each its own);
* charts drawn from the CSV by functions that read it back
  (:func:`read_csv`, :func:`speed_chart`, :func:`roofline_chart`), so they can be
  redrawn, or restyled, without measuring again.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import gc
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from llm_course import paths
from llm_course.device import is_gpu
from llm_course.measure.roofline import Ceilings, RooflinePoint, plot_roofline
from llm_course.device import synchronize as device_synchronize
from llm_course.measure.timer import Timing, benchmark, wall_time
from llm_course.measure.units import format_bandwidth, format_flops


@dataclass
class BenchRow:
    """One measurement: an op, at one size, by one implementation."""

    op: str  # "softmax", "rms_norm_fwd_bwd", "matmul", ...
    impl: str  # "triton", "torch", "torch.compile", "liger", ...
    dtype: str  # "bf16", "fp16", "fp32"
    size: str  # a label, e.g. "32768x4096" or "4096^3"
    x: float  # the size as one number, for the charts' x axis (rows, or n of an n^3 matmul)
    metric: str  # "GB/s" (memory-bound op) or "TFLOP/s" (compute-bound op): the number that matters
    flops: float  # FLOPs of one call (llm_course.measure.flops)
    bytes: float  # minimum bytes moved by one call
    ms: float = math.nan  # median time of one call
    min_ms: float = math.nan
    gbs: float = math.nan  # bytes / median time
    tflops: float = math.nan  # flops / median time
    frac_bandwidth: float = math.nan  # gbs / the copy bandwidth measured in the same run
    frac_compute: float = math.nan  # tflops / the matmul ceiling measured in the same run
    vs_torch: float = math.nan  # torch eager's time / this time at the same op and size (>1: faster)
    wall_ms: float = math.nan  # wall time per call in a back-to-back loop, host work included (GPU only)
    error: str = ""  # why there is no time, when there is none

    @property
    def ok(self) -> bool:
        return not self.error and math.isfinite(self.ms)

    @property
    def value(self) -> float:
        """The headline number: GB/s or TFLOP/s."""
        return self.gbs if self.metric == "GB/s" else self.tflops


FIELDS = [f.name for f in dataclasses.fields(BenchRow)]
_FLOAT_FIELDS = {f.name for f in dataclasses.fields(BenchRow) if f.type in ("float", float)}


# --- measuring -------------------------------------------------------------------------------


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bench_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark script shares: --dtype, --quick, --targets, --out, --redraw."""
    p = argparse.ArgumentParser(prog=f"llm-course bench {name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few runs (smoke test)")
    p.add_argument("--targets", action="store_true", help="print a pass/fail summary of the course's speed targets")
    p.add_argument("--out", default=None, help="output folder (default bench_out/<device>/, or $LLM_COURSE_BENCH_DIR/<device>/)")
    p.add_argument("--redraw", action="store_true", help="only redraw the charts from --out's CSV files")
    return p


def output_dir(args: argparse.Namespace, device: torch.device) -> Path:
    """--out, or <bench folder>/<device name>/ (``llm_course.paths.bench_dir()``: bench_out/ in the clone)."""
    return Path(args.out) if args.out else paths.bench_dir() / device_slug(device_name(device))


def free_memory() -> None:
    """Drop what the last measurement left behind (before the next, larger size)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(
    row: BenchRow,
    fn: Callable[[], Any],
    *,
    warmup: int,
    reps: int,
    device: torch.device,
    ceilings: Ceilings | None = None,
    wall_fn: Callable[[], Any] | None = None,
) -> BenchRow:
    """Time ``fn()`` into ``row``; an exception is recorded in ``row.error`` instead of stopping the run.

    On a GPU the L2 cache is flushed before each timed call (as ``triton.testing.do_bench``
    does), so every call reads its inputs from memory, and the GPU then waits about a
    millisecond, long enough for the host to queue the whole call: the times are the
    kernels' own, without Python's launch overhead (``llm_course.measure.timer._flusher``).
    On a GPU ``row.wall_ms`` is also set: the wall time per call of back-to-back calls of
    ``wall_fn`` (default ``fn``; say, the same op called through ``llm_course.ops``), which
    is what a model or a training loop pays (``llm_course.measure.timer.wall_time``: the median of
    five such loops), with the backward on the calling thread as the course's trainer runs it
    (``training/trainer.py``).
    """
    try:
        t: Timing = benchmark(fn, warmup=warmup, reps=reps, device=device, flush_cache=is_gpu(device))
    except Exception as exc:  # a benchmark run must survive one failing kernel; the CSV says what failed
        row.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        free_memory()
        return row
    row.ms, row.min_ms = t.median_ms, t.min_ms
    if is_gpu(device):  # what a loop of calls pays, host work included (the time above is the GPU's alone)
        with torch.autograd.set_multithreading_enabled(False):  # no autograd worker thread, as in the trainer
            row.wall_ms = wall_time(wall_fn or fn, warmup=1, reps=reps, rounds=5, synchronize=lambda: device_synchronize(device))
    seconds = t.median_ms / 1e3
    row.gbs = row.bytes / seconds / 1e9 if row.bytes else math.nan
    row.tflops = row.flops / seconds / 1e12 if row.flops else math.nan
    if ceilings is not None:
        row.frac_bandwidth = row.gbs / ceilings.bandwidth_gbs
        row.frac_compute = row.tflops / ceilings.flops_tflops
    return row


def fill_vs_baseline(rows: Sequence[BenchRow], baseline: str = "torch") -> None:
    """Set ``vs_torch`` of every row: the baseline's time at the same op, size and dtype over the row's."""
    base = {(r.op, r.size, r.dtype): r.ms for r in rows if r.impl == baseline and r.ok}
    for r in rows:
        b = base.get((r.op, r.size, r.dtype))
        r.vs_torch = b / r.ms if b is not None and r.ok else math.nan


# --- files -----------------------------------------------------------------------------------


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (a folder name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if is_gpu(device) else "cpu"


def write_csv(rows: Sequence[BenchRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()})
    return path


def read_csv(path: str | Path) -> list[BenchRow]:
    """The rows of a CSV written by :func:`write_csv`."""
    rows = []
    with Path(path).open(newline="") as f:
        for rec in csv.DictReader(f):
            kw = {k: (float(v) if k in _FLOAT_FIELDS and v != "" else v) for k, v in rec.items() if k in FIELDS}
            rows.append(BenchRow(**kw))
    return rows


def metadata(device: torch.device, ceilings: Ceilings | None, **extra) -> dict:
    """The facts a result file needs: machine, versions, date, ceilings."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    from llm_course.device import triton_mode

    meta = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "triton_mode": triton_mode(),
        "cuda": torch.version.cuda if is_gpu(device) else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "ceilings": dataclasses.asdict(ceilings) if ceilings is not None else None,
    }
    meta.update(extra)
    return meta


def write_meta(meta: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def ceilings_from_meta(meta: dict) -> Ceilings | None:
    c = meta.get("ceilings")
    return Ceilings(**c) if c else None


# --- the printed table -----------------------------------------------------------------------


def format_table(rows: Sequence[BenchRow]) -> str:
    """A fixed-width table: one line per row, the headline number and the fractions."""
    head = f"{'op':<20} {'size':<12} {'impl':<14} {'ms':>9} {'speed':>17} {'of ceiling':>10} {'vs torch':>8} {'wall ms':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.ok:
            lines.append(f"{r.op:<20} {r.size:<12} {r.impl:<14} {'failed: ' + r.error[:60]}")
            continue
        frac = r.frac_bandwidth if r.metric == "GB/s" else r.frac_compute
        frac_s = f"{100 * frac:.0f}%" if math.isfinite(frac) else "-"
        vs = f"{r.vs_torch:.2f}x" if math.isfinite(r.vs_torch) else "-"
        speed = format_bandwidth(r.gbs) if r.metric == "GB/s" else format_flops(r.tflops)  # 3 digits, never 0.0
        wall = f"{r.wall_ms:.4g}" if math.isfinite(r.wall_ms) else "-"
        lines.append(f"{r.op:<20} {r.size:<12} {r.impl:<14} {r.ms:>9.4g} {speed:>17} {frac_s:>10} {vs:>8} {wall:>9}")
    return "\n".join(lines)


# --- charts ----------------------------------------------------------------------------------


def _figure(n_panels: int, ncols: int = 4, panel=(4.2, 3.4)):
    from matplotlib.figure import Figure  # no pyplot: renders without a display

    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def speed_chart(rows: Sequence[BenchRow], path: str | Path, *, ceilings: Ceilings | None = None, title: str = "") -> Path:
    """One panel per op: speed (GB/s or TFLOP/s) against size, one line per implementation.

    The ceiling measured in the same run is the dashed line: copy bandwidth on
    memory-bound panels, the cuBLAS matmul on compute-bound ones.
    """
    ops = list(dict.fromkeys(r.op for r in rows))
    fig, axes = _figure(max(1, len(ops)))
    impls = list(dict.fromkeys(r.impl for r in rows))
    for ax, op in zip(axes, ops):
        mine = [r for r in rows if r.op == op and r.ok]
        metric = next((r.metric for r in rows if r.op == op), "GB/s")
        for i, impl in enumerate(impls):
            pts = sorted((r.x, r.value) for r in mine if r.impl == impl)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=impl, ms=4)
        if ceilings is not None:
            roof = ceilings.bandwidth_gbs if metric == "GB/s" else ceilings.flops_tflops
            what = "copy" if metric == "GB/s" else f"matmul {ceilings.dtype}"
            ax.axhline(roof, ls="--", color="gray", lw=1, label=f"measured {what}")
        ax.set_xscale("log", base=2)
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("rows" if metric == "GB/s" else "n (n x n x n)", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def roofline_chart(
    rows: Sequence[BenchRow],
    path: str | Path,
    ceilings: Ceilings,
    *,
    impl: str = "triton",
    datasheet=None,
    title: str | None = None,
) -> Path:
    """The ops of ``impl``, each at its largest size, placed on the roofline of ``ceilings``."""
    from matplotlib.figure import Figure

    points = []
    for op in dict.fromkeys(r.op for r in rows):
        mine = [r for r in rows if r.op == op and r.impl == impl and r.ok and r.flops and r.bytes]
        if mine:
            r = max(mine, key=lambda r: r.x)
            points.append(RooflinePoint(f"{op} {r.size}", r.flops, r.bytes, r.ms / 1e3))
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    plot_roofline(ceilings, points, datasheet=datasheet, ax=ax, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

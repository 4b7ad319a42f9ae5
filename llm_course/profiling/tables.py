"""The three tables of a step's profile: kernels, categories, ops on the roofline.

* **kernels**: one row per kernel name: calls, total and mean time, share of all kernel
  time, category, the course op it mostly ran in, and -- where known -- FLOPs, bytes,
  intensity, achieved TFLOP/s and GB/s and which roof bounds it.
* **categories**: time by kind of work, plus ``idle`` = wall time minus the time the
  device was busy; the shares add up to 1.
* **ops**: one row per course op and phase (``linear`` forward, ``attention``
  backward, ...): the op's FLOPs and bytes from its arguments (``annotate.py``) against
  the summed time of its kernels -- a point on the roofline.

Where a kernel's FLOPs come from (its ``flops_source``):

``op``        the kernel is the only kernel its op launched in that phase (a Triton
              kernel, cuBLAS's one gemm for a linear): the op's count is the kernel's;
``profiler``  ``torch.profiler``'s own count (``with_flops``) for the PyTorch op that
              launched it (matmuls: ``aten::mm``, ``addmm``, ``bmm``);
(empty)       no estimate: a kernel that is one of several of its op (the torch
              reference's LayerNorm launches a mean, a subtraction, ...), or ran outside
              every op. Those ops still get their point in the ops table.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

from llm_course.measure.roofline import Ceilings, attainable, bound
from llm_course.profiling.categories import CATEGORIES
from llm_course.profiling.events import Attribution, group_by_instance

KERNEL_FIELDS = ["name", "category", "calls", "total_us", "mean_us", "share", "op", "flops", "bytes", "intensity",
                 "tflops", "gbs", "bound", "fraction_of_roof", "flops_source"]  # fmt: skip
CATEGORY_FIELDS = ["category", "time_us", "share"]
OP_FIELDS = ["op", "phase", "calls", "time_us", "flops", "bytes", "intensity", "tflops", "gbs", "bound",
             "fraction_of_roof"]  # fmt: skip


@dataclass
class KernelRow:
    name: str
    category: str
    calls: int
    total_us: float
    mean_us: float
    share: float  # of the summed time of every kernel
    op: str  # "linear.backward", "" outside every op
    flops: float = math.nan
    bytes: float = math.nan
    intensity: float = math.nan
    tflops: float = math.nan
    gbs: float = math.nan
    bound: str = ""  # "compute" | "memory" | "" (no estimate)
    fraction_of_roof: float = math.nan
    flops_source: str = ""  # "op" | "profiler" | "op+profiler" | ""


@dataclass
class CategoryRow:
    category: str
    time_us: float
    share: float  # of wall time when the device was never busier than the wall, see category_rows


@dataclass
class OpRow:
    op: str
    phase: str
    calls: int
    time_us: float
    flops: float
    bytes: float
    intensity: float = math.nan
    tflops: float = math.nan
    gbs: float = math.nan
    bound: str = ""
    fraction_of_roof: float = math.nan


def _place(row, t: float, ceilings: Ceilings | None) -> None:
    """Fill intensity, TFLOP/s, GB/s, bound and fraction of the roof from flops, bytes and ``t`` (us)."""
    if not (row.flops > 0 and row.bytes > 0 and t > 0):
        return
    row.intensity = row.flops / row.bytes
    row.tflops = row.flops / (t * 1e-6) / 1e12
    row.gbs = row.bytes / (t * 1e-6) / 1e9
    if ceilings is not None:
        row.bound = bound(row.intensity, ceilings.flops_tflops, ceilings.bandwidth_gbs)
        row.fraction_of_roof = row.tflops / attainable(row.intensity, ceilings.flops_tflops, ceilings.bandwidth_gbs)


def kernel_rows(att: Attribution, ceilings: Ceilings | None = None) -> list[KernelRow]:
    """One row per (kernel name, category), most time first: the same kernel (a GEMM) run for the
    loss and for the layers is two rows, so the table adds up to the categories' times."""
    total = sum(c.us for c in att.calls) or 1.0
    by_key: dict[tuple[str, str], list] = defaultdict(list)
    for c in att.calls:
        by_key[(c.name, c.category)].append(c)
    # op estimates of the (op call, phase) groups that launched a single kernel name
    op_flops: dict[tuple[str, str], float] = defaultdict(float)
    op_bytes: dict[tuple[str, str], float] = defaultdict(float)
    covered: set[int] = set()  # id() of calls covered by an op estimate
    for (inst, phase), calls in group_by_instance(att.calls).items():
        keys = {(c.name, c.category) for c in calls}
        oc = att.op_calls[inst]
        fl, by = (oc.fwd_flops, oc.fwd_bytes) if phase == "forward" else (oc.bwd_flops, oc.bwd_bytes)
        if len(keys) == 1 and fl > 0 and by > 0:
            key = keys.pop()
            op_flops[key] += fl
            op_bytes[key] += by
            covered.update(id(c) for c in calls)
    rows = []
    for key, calls in by_key.items():
        name, category = key
        us = sum(c.us for c in calls)
        ops = Counter(f"{c.op}.{c.phase}" if c.op else ("optimizer" if c.phase == "optimizer" else "") for c in calls)
        row = KernelRow(name, category, len(calls), us, us / len(calls), us / total, ops.most_common(1)[0][0])
        rest = [c for c in calls if id(c) not in covered]
        if all(c.profiler_flops and c.profiler_bytes for c in rest):
            fl = op_flops.get(key, 0.0) + sum(c.profiler_flops for c in rest)
            by = op_bytes.get(key, 0.0) + sum(c.profiler_bytes for c in rest)
            if fl > 0 and by > 0:
                row.flops, row.bytes = fl, by
                row.flops_source = "+".join(s for s, on in (("op", key in op_flops), ("profiler", bool(rest))) if on)
        _place(row, us, ceilings)
        rows.append(row)
    rows.sort(key=lambda r: r.total_us, reverse=True)
    return rows


def category_rows(att: Attribution, wall_us: float) -> list[CategoryRow]:
    """Time by category and ``idle`` = wall - busy; shares of their sum (which is the wall time
    unless kernels of several streams overlapped), so they add up to 1."""
    times = dict.fromkeys(CATEGORIES, 0.0)
    for c in att.calls:
        times[c.category] += c.us
    times["idle"] = max(0.0, wall_us - att.busy_us)
    total = sum(times.values()) or 1.0
    return [CategoryRow(k, v, v / total) for k, v in times.items()]


def op_rows(att: Attribution, ceilings: Ceilings | None = None) -> list[OpRow]:
    """One row per (course op, phase): its estimated FLOPs and bytes against its kernels' time."""
    time: dict[tuple[str, str], float] = defaultdict(float)
    insts: dict[tuple[str, str], set] = defaultdict(set)
    for (inst, phase), calls in group_by_instance(att.calls).items():
        key = (att.op_calls[inst].op, phase)
        time[key] += sum(c.us for c in calls)
        insts[key].add(inst)
    rows = []
    for (op, phase), us in time.items():
        ocs = [att.op_calls[i] for i in insts[(op, phase)]]
        fwd = phase == "forward"
        fl = sum(o.fwd_flops if fwd else o.bwd_flops for o in ocs)
        by = sum(o.fwd_bytes if fwd else o.bwd_bytes for o in ocs)
        row = OpRow(op, phase, len(ocs), us, fl, by)
        _place(row, us, ceilings)
        rows.append(row)
    rows.sort(key=lambda r: r.time_us, reverse=True)
    return rows

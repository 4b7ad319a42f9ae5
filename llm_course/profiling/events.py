"""From the profiler's raw events to tables: each kernel's time, op, category, FLOPs and bytes.

``torch.profiler`` records two kinds of events:

* **host events**, nested: a range of ours (``llm_course.ops.linear``) holds PyTorch ops
  (``aten::addmm``), which launch kernels; the backward's ops sit inside
  ``autograd::engine::evaluate_function: AddmmBackward0``;
* **device events**: the kernels, copies and memsets that ran on the GPU, each linked to
  the host op that launched it (its *correlation id*).

So for every kernel we can walk up from its launching op to find *which course op* it
belongs to. Forward: the enclosing ``llm_course.ops.<name>`` range. Backward: autograd
numbers each node it creates (the forward op's ``sequence_nr``), and the backward's
``evaluate_function`` event carries the same number; the forward op that created node
``n`` is the *last* forward event that carries ``n`` (the counter moves on once a node
is made), and the range around it names the op.

On the CPU there are no device events: each CPU op is its own "kernel", timed by its
self time (its time minus the ops it called).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from llm_course.measure.flops import matmul_bytes
from llm_course.profiling.annotate import RANGE_PREFIX, OpCall
from llm_course.profiling.categories import categorize

BACKWARD_PREFIX = "autograd::engine::evaluate_function"
OPTIMIZER_RANGE = "llm_course.step.optimizer"  # clipping + optimizer.step() + zero_grad
DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")
_DTYPE_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "BFloat16": 2, "Half": 2}


@dataclass
class KernelCall:
    """One run of one kernel (or, on the CPU, one CPU op's self time)."""

    name: str
    us: float  # its duration (device time; CPU self time on the CPU)
    start: float
    end: float
    op: str | None  # the course op it belongs to ("linear"), None outside every op
    phase: str  # "forward" | "backward" | "optimizer" | "other"
    category: str
    instance: int | None  # which op call (an index into the OpCall list) it belongs to
    profiler_flops: float | None = None  # from with_flops, when its launching op launched only it
    profiler_bytes: float | None = None


@dataclass
class Attribution:
    """Every kernel call of the profile, plus each op call's estimated cost."""

    calls: list[KernelCall] = field(default_factory=list)
    op_calls: list[OpCall] = field(default_factory=list)
    busy_us: float = 0.0  # time the device was busy (the union of its kernels' intervals)
    unmatched_ranges: int = 0  # op ranges with no OpCall (should be 0)


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _mm_bytes(name: str, shapes, dtypes, default_element_size: int | None = None) -> float | None:
    """Minimum bytes of aten::mm / addmm / bmm / baddbmm from the recorded input shapes.

    The element size comes from the recorded input dtypes; PyTorch 2.11's events do not
    record them, and then ``default_element_size`` (the step's compute precision) is used.
    """
    try:
        db = _DTYPE_BYTES.get(str(dtypes[-1]).strip()) if dtypes else default_element_size
        if db is None:
            return None
        a, b = shapes[-2], shapes[-1]
        if name in ("aten::mm", "aten::addmm"):
            return float(matmul_bytes(a[0], b[1], a[1], db))
        if name in ("aten::bmm", "aten::baddbmm"):
            return float(a[0] * matmul_bytes(a[1], b[2], a[2], db))
    except (IndexError, TypeError):
        return None
    return None


def _is_device_event(e) -> bool:
    if e.device_type.name not in ("CUDA", "PrivateUse1", "XPU"):
        return False
    activity = getattr(e, "activity_type", None)  # not in PyTorch 2.11's events
    if activity is not None:
        return activity in DEVICE_ACTIVITIES
    return not getattr(e, "is_user_annotation", False)


def _is_cpu_kernel(e) -> bool:
    """A CPU op whose self time counts on the CPU: not one of the ranges, not the engine's wrapper."""
    return (e.device_type.name == "CPU" and not getattr(e, "is_user_annotation", False) and not e.is_async
            and getattr(e, "activity_type", None) in (None, "cpu_op") and not e.name.startswith(BACKWARD_PREFIX)
            and not e.name.startswith("ProfilerStep") and e.self_cpu_time_total > 0)  # fmt: skip


def attribute(events, op_calls: list[OpCall], on_device: bool, default_element_size: int | None = None) -> Attribution:
    """Place every kernel of ``events`` (``prof.events()``) on its op, phase and category.

    ``default_element_size``: bytes per element of a matmul whose event has no recorded dtypes
    (PyTorch 2.11): 2 for a bf16 or fp16 step, 4 for fp32.
    """
    cpu = [e for e in events if e.device_type.name == "CPU"]
    # --- the op ranges, in call order, matched to the OpCalls ---------------------------
    ranges = sorted((e for e in cpu if e.name.startswith(RANGE_PREFIX)), key=lambda e: e.time_range.start)
    instance_of = {id(e): i for i, e in enumerate(ranges[: len(op_calls)])}
    out = Attribution(op_calls=list(op_calls), unmatched_ranges=max(0, len(ranges) - len(op_calls)))

    # --- walking up the host tree (memoized) --------------------------------------------
    memo: dict[int, tuple[int | None, str, bool]] = {}

    def context(e) -> tuple[int | None, str, bool]:
        """(op instance, phase marker, inside backward) of host event e, looking at e and its parents."""
        key = id(e)
        if key in memo:
            return memo[key]
        if e.name.startswith(RANGE_PREFIX):
            res = (instance_of.get(id(e)), "forward", False)
        elif e.name.startswith(BACKWARD_PREFIX):
            res = (backward_instance.get(e.sequence_nr), "backward", True)
        elif e.name == OPTIMIZER_RANGE or e.name.startswith("Optimizer."):
            res = (None, "optimizer", False)
        elif e.cpu_parent is not None:
            res = context(e.cpu_parent)
        else:
            res = (None, "other", False)
        memo[key] = res
        return res

    # forward node number -> the op instance of the last forward event that carried it
    backward_instance: dict[int, int | None] = {}
    for e in sorted(cpu, key=lambda e: e.time_range.start):
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not e.name.startswith(BACKWARD_PREFIX):
            p, in_bwd = e, False
            while p is not None:
                if p.name.startswith(BACKWARD_PREFIX):
                    in_bwd = True
                    break
                p = p.cpu_parent
            if not in_bwd:
                inst = None
                p = e
                while p is not None:
                    if p.name.startswith(RANGE_PREFIX):
                        inst = instance_of.get(id(p))
                        break
                    p = p.cpu_parent
                backward_instance[e.sequence_nr] = inst
    memo.clear()

    counted: dict[int, tuple] = {}  # id(event that counted FLOPs) -> (event, the kernels it launched)

    def make_call(name, us, start, end, launcher) -> KernelCall:
        inst, phase, _ = context(launcher) if launcher is not None else (None, "other", False)
        op = op_calls[inst].op if inst is not None else None
        call = KernelCall(name, us, start, end, op, phase, categorize(name, op, phase), inst)
        if not on_device:  # a CPU op's own row: its own count
            if launcher is not None and launcher.flops:
                call.profiler_flops = float(launcher.flops)
                call.profiler_bytes = _mm_bytes(launcher.name, launcher.input_shapes, getattr(launcher, "input_dtypes", None),
                                                default_element_size)
            return call
        src = launcher  # on a GPU the launch (cudaLaunchKernel); the FLOPs are on the aten op above it
        while src is not None and not src.flops:
            src = src.cpu_parent
        if src is not None:
            counted.setdefault(id(src), (src, []))[1].append(call)
        return call

    def give_flops() -> None:
        """An op's FLOP count goes to its kernel when it launched exactly one (else it is not split)."""
        for src, calls in counted.values():
            if len(calls) == 1:
                calls[0].profiler_flops = float(src.flops)
                calls[0].profiler_bytes = _mm_bytes(src.name, src.input_shapes, getattr(src, "input_dtypes", None),
                                                    default_element_size)

    if on_device:
        device = [e for e in events if _is_device_event(e)]
        if not device or hasattr(device[0], "linked_correlation_id"):
            # a kernel names the CPU event (the launch) that queued it by its correlation id
            by_corr = {e.id: e for e in cpu if not e.is_async and e.linked_correlation_id == 0}
            for e in device:
                s, t = e.time_range.start, e.time_range.end
                out.calls.append(make_call(e.name, t - s, s, t, by_corr.get(e.linked_correlation_id)))
        else:  # older PyTorch (2.11): the launching CPU event lists its kernels (name, duration)
            # The profiler's own bookkeeping ("Activity Buffer Request", "Lazy Function Loading")
            # can sit inside the launching op with the op's id and list the same kernels again:
            # the outermost event of an id (the first to start) is the launcher, the others repeats.
            seen: set[int] = set()
            for e in sorted(cpu, key=lambda e: e.time_range.start):
                kernels = getattr(e, "kernels", None) or []
                if e.is_async or not kernels or e.id in seen:
                    continue
                seen.add(e.id)
                for k in kernels:
                    s = e.time_range.start
                    out.calls.append(make_call(k.name, k.duration, s, s + k.duration, e))
        out.busy_us = _union_us([(e.time_range.start, e.time_range.end) for e in device])
    else:
        for e in cpu:
            if _is_cpu_kernel(e):
                out.calls.append(make_call(e.name, e.self_cpu_time_total, e.time_range.start, e.time_range.end, e))
        out.busy_us = sum(c.us for c in out.calls)
    give_flops()
    return out


def short_name(name: str, width: int = 60) -> str:
    """A kernel name a table can show: template arguments dropped, cut to ``width``."""
    s = re.sub(r"^void ", "", name)
    depth, kept = 0, []
    for ch in s:  # drop everything inside <...>
        if ch == "<":
            depth += 1
            if depth == 1:
                kept.append("<>")
        elif ch == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            kept.append(ch)
    s = "".join(kept)
    return s if len(s) <= width else s[: width - 3] + "..."


def group_by_instance(calls: list[KernelCall]) -> dict[tuple[int, str], list[KernelCall]]:
    """The kernel calls of each (op call, phase)."""
    groups: dict[tuple[int, str], list[KernelCall]] = defaultdict(list)
    for c in calls:
        if c.instance is not None and c.phase in ("forward", "backward"):
            groups[(c.instance, c.phase)].append(c)
    return groups

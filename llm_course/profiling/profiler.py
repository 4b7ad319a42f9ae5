"""See where the time goes: a small wrapper around ``torch.profiler``.

    from llm_course.profiling import profile_region

    with profile_region("traces/step.json", top_k=8) as prof:
        loss = model(x).sum()
        loss.backward()
    # on exit: a table of the 8 most expensive kernels/ops is printed, and
    # traces/step.json holds the full timeline

The table ranks what ran inside the block by its *self* time: on a GPU the
device time of each kernel (what the GPU spent in it), on the CPU the CPU time
of each op without the ops it called. One row per name, with how many times it
ran and its share of the total.

The trace file is a Chrome trace (JSON). Open it at https://ui.perfetto.dev (drag
the file in) or in Chrome at chrome://tracing: one row per CPU thread and per
GPU stream, one box per op or kernel, on a common time axis. Gaps between GPU
boxes are time the GPU sat idle, usually waiting for Python to launch the next
kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile as _torch_profile

from llm_course.device import get_device, synchronize, is_gpu


@dataclass
class ProfileRow:
    """One line of the table: an op or kernel name, how often it ran, its self time."""

    name: str
    calls: int
    time_us: float  # summed self time, microseconds
    percent: float  # share of the summed self time of everything profiled


@dataclass
class ProfileResult:
    """What :class:`profile_region` leaves behind once its block has ended."""

    rows: list[ProfileRow] = field(default_factory=list)  # the top_k rows, most expensive first
    total_us: float = 0.0  # summed self time of everything profiled
    time_kind: str = ""  # "device" (GPU kernels) or "cpu"
    trace_path: Path | None = None
    table: str = ""


def _self_time_us(avg, kind: str) -> float:
    if kind == "device":
        return float(getattr(avg, "self_device_time_total", getattr(avg, "self_cuda_time_total", 0.0)))
    return float(avg.self_cpu_time_total)


def format_table(rows: list[ProfileRow], total_us: float, kind: str) -> str:
    """The printed table: rank, name, calls, self time and share."""
    width = max([len("name")] + [min(len(r.name), 70) for r in rows])
    unit = "GPU" if kind == "device" else "CPU"
    lines = [f"{'#':>2}  {'name':<{width}}  {'calls':>6}  {unit + ' time (ms)':>13}  {'share':>6}"]
    for i, r in enumerate(rows, 1):
        name = r.name if len(r.name) <= 70 else r.name[:67] + "..."
        lines.append(f"{i:>2}  {name:<{width}}  {r.calls:>6}  {r.time_us / 1e3:>13.3f}  {r.percent:>5.1f}%")
    lines.append(f"total {unit} self time: {total_us / 1e3:.3f} ms")
    return "\n".join(lines)


class profile_region:
    """Profile a block; on exit print its ``top_k`` ops/kernels and write a Chrome trace.

    Args:
        trace_path: where to write the trace JSON (folders are created); None writes none.
        top_k: how many rows the table shows.
        device: the device whose work is profiled (default ``llm_course.get_device()``):
            a GPU adds GPU activity and ranks by GPU time; the CPU ranks by CPU time.
        show: print the table on exit (it is kept in ``.result.table`` either way).
        record_shapes: also record input shapes (a larger trace).

    The block's queued GPU work is waited for before the profiler stops, so
    kernels launched at the end of the block are counted too.
    """

    def __init__(
        self,
        trace_path: str | os.PathLike | None = None,
        top_k: int = 10,
        *,
        device: torch.device | str | None = None,
        show: bool = True,
        record_shapes: bool = False,
    ):
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.trace_path = Path(trace_path) if trace_path is not None else None
        self.top_k = top_k
        self.device = torch.device(device) if device is not None else get_device()
        self.show = show
        self.record_shapes = record_shapes
        self.time_kind = "device" if is_gpu(self.device) else "cpu"
        self.result = ProfileResult(time_kind=self.time_kind)
        self._prof = None

    def __enter__(self) -> ProfileResult:
        activities = [ProfilerActivity.CPU]
        if is_gpu(self.device):
            activities.append(ProfilerActivity.CUDA)
        synchronize(self.device)  # earlier work is not part of the region
        self._prof = _torch_profile(activities=activities, record_shapes=self.record_shapes)
        self._prof.__enter__()
        return self.result

    def __exit__(self, exc_type, exc, tb) -> bool:
        synchronize(self.device)
        self._prof.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            return False  # an error inside the block: no report, let it propagate
        averages = [a for a in self._prof.key_averages() if _self_time_us(a, self.time_kind) > 0]
        total = sum(_self_time_us(a, self.time_kind) for a in averages)
        averages.sort(key=lambda a: _self_time_us(a, self.time_kind), reverse=True)
        rows = [
            ProfileRow(a.key, int(a.count), _self_time_us(a, self.time_kind), 100.0 * _self_time_us(a, self.time_kind) / total if total else 0.0)
            for a in averages[: self.top_k]
        ]  # fmt: skip
        self.result.rows, self.result.total_us = rows, total
        self.result.table = format_table(rows, total, self.time_kind)
        if self.trace_path is not None:
            self.trace_path.parent.mkdir(parents=True, exist_ok=True)
            self._prof.export_chrome_trace(str(self.trace_path))
            self.result.trace_path = self.trace_path
        if self.show:
            print(self.result.table)
            if self.trace_path is not None:
                print(f"trace written to {self.trace_path.name} (open it at https://ui.perfetto.dev or chrome://tracing)")
        return False

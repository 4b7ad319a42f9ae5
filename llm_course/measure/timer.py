"""Timing a piece of work correctly, on a GPU or on the CPU.

    from llm_course.measure import benchmark
    t = benchmark(torch.matmul, [(a, b)])          # Timing(median_ms=..., ...)
    print(t)                                       # median 1.234 ms (min ..., mean ..., 50 runs)

Why not just ``time.perf_counter()`` around the call? A GPU runs work
*asynchronously*: calling a kernel only puts it in a queue and returns at once,
so the host clock measures the queueing (microseconds), not the work. The
fix is to timestamp the work *on the device*, in the queue itself:

1. **warm up**: the first calls compile kernels, autotune, allocate memory; don't time them;
2. put an event in the queue before and after each timed call
   (``torch.cuda.Event(enable_timing=True)``, ``.record()``);
3. **synchronize** (wait until the queue is empty) before reading the events:
   an event that has not been reached yet has no time;
4. ``start.elapsed_time(end)`` is the device time between the two, in milliseconds;
5. report the **median** of many runs: a few runs are always slow (another
   process, a clock change), and the median ignores them where the mean doesn't.

:func:`event_times` is that recipe, with the event class and the synchronize
function passed in, so that it is tested on a CPU with a simulated GPU.
On the CPU work is synchronous and the host clock is right.

Repeating the same call on the same inputs measures the cache, not the memory:
after the first run the inputs of a small op sit in the L2 cache. Pass several
input sets (``args_list``, see :func:`rotating_inputs`) so the calls cycle
through more bytes than the cache holds, or ``flush_cache=True``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from llm_course.device import get_device, synchronize as device_synchronize

# Bytes written between timed calls by flush_cache=True; bigger than any L2 cache
# (H100: 50 MB, H200: 60 MB) and than most CPUs' last-level caches.
FLUSH_BYTES_GPU = 256 * 2**20
FLUSH_BYTES_CPU = 64 * 2**20
# GPU clock cycles the flush waits on the device (about 1 ms at 2 GHz), so that the host
# can queue the timed call meanwhile (see _flusher)
HOST_HEADSTART_CYCLES = 2_000_000


@dataclass
class Timing:
    """Timings of repeated runs of one call, in milliseconds."""

    median_ms: float
    min_ms: float
    mean_ms: float
    times_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def seconds(self) -> float:
        """The median, in seconds (what FLOP/s and byte/s divide by)."""
        return self.median_ms / 1e3

    @classmethod
    def from_times(cls, times_ms: list[float]) -> "Timing":
        if not times_ms:
            raise ValueError("no timings: reps must be at least 1")
        times = [float(t) for t in times_ms]
        return cls(statistics.median(times), min(times), statistics.fmean(times), times)

    def __str__(self) -> str:
        return (
            f"median {_fmt_ms(self.median_ms)} (min {_fmt_ms(self.min_ms)}, "
            f"mean {_fmt_ms(self.mean_ms)}, {len(self.times_ms)} runs)"
        )


def _fmt_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1e3:.3f} s"
    if ms >= 1:
        return f"{ms:.3f} ms"
    return f"{ms * 1e3:.1f} us"


def event_times(
    fn: Callable[[], Any],
    *,
    warmup: int,
    reps: int,
    Event: Callable[..., Any],
    synchronize: Callable[[], None],
    before_each: Callable[[], Any] | None = None,
) -> list[float]:
    """Device times (ms) of ``reps`` calls of ``fn()``, after ``warmup`` untimed calls.

    ``Event`` makes device events (``torch.cuda.Event`` on a GPU) and
    ``synchronize`` waits for the device's queue to drain (``torch.cuda.synchronize``).
    ``before_each`` (say, a cache flush) runs before each timed call, outside
    its pair of events.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    synchronize()
    starts = [Event(enable_timing=True) for _ in range(reps)]
    ends = [Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        if before_each is not None:
            before_each()
        start.record()
        fn()
        end.record()
    synchronize()  # an event has a time only once the device has reached it
    return [start.elapsed_time(end) for start, end in zip(starts, ends)]


def time_gpu(
    fn: Callable[[], Any], *, warmup: int, reps: int, Event: Callable[..., Any], synchronize: Callable[[], None]
) -> float:
    """Median device time of ``fn()`` in milliseconds (the recipe of :func:`event_times`)."""
    return statistics.median(event_times(fn, warmup=warmup, reps=reps, Event=Event, synchronize=synchronize))


def host_times(
    fn: Callable[[], Any], *, warmup: int, reps: int, before_each: Callable[[], Any] | None = None
) -> list[float]:
    """Host-clock times (ms) of ``reps`` calls of ``fn()``: right for synchronous (CPU) work only."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if before_each is not None:
            before_each()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def wall_time(
    fn: Callable[[], Any],
    *,
    warmup: int,
    reps: int,
    rounds: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> float:
    """Wall time (ms) per call of ``reps`` back-to-back calls of ``fn()``: what a loop pays.

    The device is drained before the first call and after the last one, and
    nothing in between: the host queues call after call as a training loop does.
    When the host's work per call (argument checks, autograd, kernel launches)
    is less than the device's, the calls overlap it and this is the device time;
    when it is more, the host sets the pace and this time is larger.

    ``rounds > 1`` repeats the loop that many times (draining the device between
    rounds) and returns the median round: a loop of a few milliseconds is easily
    stretched by one hiccup of the host (the garbage collector, another process),
    which says nothing about the op.
    """
    if reps < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need reps >= 1, warmup >= 0 and rounds >= 1, got reps={reps}, warmup={warmup}, rounds={rounds}")
    for _ in range(warmup):
        fn()
    per_call = []
    for _ in range(rounds):
        synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        synchronize()
        per_call.append((time.perf_counter() - t0) * 1e3 / reps)
    return statistics.median(per_call)


def _flusher(device: torch.device) -> Callable[[], Any]:
    """What ``flush_cache=True`` runs before each timed call.

    On a GPU it also queues a wait of about a millisecond (``torch.cuda._sleep``,
    a kernel that spins for a number of clock cycles) behind the flush. While the
    GPU spins, the host queues the whole timed call, so the GPU never waits for
    Python in between: what the events measure is the GPU's work, not the
    launch overhead. (Without it an op whose host-side cost -- argument checks,
    autograd, kernel launches -- exceeds its GPU time would be timed by the host.)
    """
    nbytes = FLUSH_BYTES_CPU if device.type == "cpu" else FLUSH_BYTES_GPU
    buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    spin = getattr(torch.cuda, "_sleep", None) if device.type == "cuda" else None
    if spin is None:
        return buf.zero_

    def flush():
        buf.zero_()
        spin(HOST_HEADSTART_CYCLES)

    return flush


def benchmark(
    fn: Callable[..., Any],
    args_list: list[tuple] | None = None,
    *,
    warmup: int = 5,
    reps: int = 50,
    device: torch.device | str | None = None,
    flush_cache: bool = False,
) -> Timing:
    """Time ``fn(*args)`` over ``reps`` runs, cycling through the input sets of ``args_list``.

    Call ``i`` (warm-up calls included) runs ``fn(*args_list[i % len(args_list)])``;
    ``args_list=None`` calls ``fn()``. On a GPU the runs are timed with device
    events (:func:`event_times`), on the CPU with the host clock. ``device``
    defaults to ``llm_course.get_device()``; it must be where ``fn`` runs.
    ``flush_cache=True`` overwrites a large buffer before each timed run
    (outside the timed part), so every run starts with a cold cache; on a GPU it
    also gives the host a head start, so that the launch overhead is not timed.
    """
    dev = torch.device(device) if device is not None else get_device()
    sets = list(args_list) if args_list else [()]
    cycle = itertools.cycle(sets)

    def call():
        return fn(*next(cycle))

    flush = _flusher(dev) if flush_cache else None
    if dev.type == "cpu":
        times = host_times(call, warmup=warmup, reps=reps, before_each=flush)
    else:
        with torch.cuda.device(dev):  # events are recorded on this device's current stream
            times = event_times(
                call,
                warmup=warmup,
                reps=reps,
                Event=torch.cuda.Event,
                synchronize=lambda: device_synchronize(dev),
                before_each=flush,
            )
    return Timing.from_times(times)


def rotating_inputs(
    make_inputs: Callable[[], tuple],
    bytes_per_set: int,
    min_total_bytes: int | None = None,
    *,
    max_sets: int = 64,
) -> list[tuple]:
    """Enough input sets, made by ``make_inputs()``, to spill out of the cache.

    ``bytes_per_set`` is what one call touches (inputs and outputs). The number of
    sets is ``ceil(min_total_bytes / bytes_per_set)``, at least 1 and at most
    ``max_sets``; ``min_total_bytes`` defaults to twice the flush size of the
    current device (512 MiB on a GPU, 128 MiB on the CPU). Very small inputs
    stay cached whatever we do: their time is mostly launch overhead anyway.
    """
    if min_total_bytes is None:
        min_total_bytes = 2 * (FLUSH_BYTES_CPU if get_device().type == "cpu" else FLUSH_BYTES_GPU)
    n = max(1, min(max_sets, math.ceil(min_total_bytes / max(1, bytes_per_set))))
    return [make_inputs() for _ in range(n)]


@dataclass
class Elapsed:
    """What :func:`time_region` yields; ``ms`` is set when the block ends."""

    ms: float = math.nan

    @property
    def seconds(self) -> float:
        return self.ms / 1e3


@contextlib.contextmanager
def time_region(device: torch.device | str | None = None) -> Iterator[Elapsed]:
    """Wall time of a whole block, synchronizing the device at both ends.

        with time_region() as t:
            train_step()
        print(t.ms)

    Right for long regions (a training step, a generation); for one kernel use
    :func:`benchmark`, which warms up and takes a median.
    """
    dev = torch.device(device) if device is not None else get_device()
    out = Elapsed()
    device_synchronize(dev)
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        device_synchronize(dev)
        out.ms = (time.perf_counter() - t0) * 1e3

"""Stage 0 exercise: time work on a GPU with device events.

Calling a GPU kernel only *queues* it and returns at once, so the host clock
(``time.perf_counter``) around the call measures almost nothing. Time it on the
device instead: record an event just before and just after the work, in the
same queue, and read the time between them once the device has reached both.

On a real GPU you would call ``time_gpu(fn, warmup=5, reps=51,
Event=torch.cuda.Event, synchronize=torch.cuda.synchronize)``; the graded
tests pass a simulated GPU, so this runs on any machine.
"""

import statistics
from typing import Any, Callable


def time_gpu(
    fn: Callable[[], Any], *, warmup: int, reps: int, Event: Callable[..., Any], synchronize: Callable[[], None]
) -> float:
    """The median time of one call of ``fn()`` on the device, in milliseconds.

    Args:
        fn: launches the work to time (it returns before the work is done).
        warmup: how many calls to make first, untimed (the first calls compile
            and autotune the kernels and are much slower).
        reps: how many calls to time, each one on its own.
        Event: makes a device event, as ``torch.cuda.Event``: ``e = Event(enable_timing=True)``;
            ``e.record()`` puts it in the device's queue; ``start.elapsed_time(end)``
            is the time in ms from ``start`` to ``end``, readable only once the
            device has reached both events.
        synchronize: waits until the device has finished everything queued so far.

    Steps: the warm-up calls; then, for each of the ``reps`` timed calls, a fresh
    pair of events recorded around it; then wait for the device; then read the
    ``reps`` times and return their median (a few runs are always slow; the
    median ignores them, the mean does not). ``fn`` is called ``warmup + reps``
    times in all.

    Hint: ``statistics.median`` takes the median of a list.
    """
    # BEGIN EXERCISE gpu_timer
    # stub raises: "time fn with device events and return the median in ms"
    for _ in range(warmup):
        fn()
    pairs = []
    for _ in range(reps):
        start, end = Event(enable_timing=True), Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in pairs)
    # END EXERCISE gpu_timer

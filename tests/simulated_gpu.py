"""A simulated asynchronous GPU, to test GPU timing code on a CPU.

It behaves like CUDA where timing is concerned:

* calling :meth:`SimulatedGPU.kernel` only *queues* work of a known duration and
  returns at once (no real time passes);
* ``gpu.Event(enable_timing=True).record()`` queues a marker;
* ``gpu.synchronize()`` drains the queue: the device clock advances by each
  piece of work, and each marker gets the clock's time as it is reached;
* ``start.elapsed_time(end)`` returns the device time from ``start`` to ``end``
  in milliseconds, and raises (as CUDA does) unless both events were made with
  ``enable_timing=True``, were recorded, and have been reached by the device.

The durations are given per call: ``durations_ms[i]`` is the duration of the
i-th call of ``kernel`` (warm-up calls included); calls past the end of the
list take ``durations_ms[-1]``.
"""

from __future__ import annotations

from typing import Sequence


class SimulatedGPUError(RuntimeError):
    """What the simulated device raises where CUDA would raise; the message is for the learner."""


class SimulatedEvent:
    def __init__(self, gpu: "SimulatedGPU", enable_timing: bool = False, **_ignored):
        self.gpu = gpu
        self.enable_timing = enable_timing
        self.recorded = False
        self.time_ms: float | None = None  # set when the device reaches the event

    def record(self, stream=None) -> None:
        self.recorded = True
        self.time_ms = None
        self.gpu.queue.append(("event", self))

    def query(self) -> bool:
        return self.time_ms is not None

    def synchronize(self) -> None:
        """Wait for the device to reach this event (like ``torch.cuda.Event.synchronize``)."""
        self.gpu.drain(until=self)

    def elapsed_time(self, end: "SimulatedEvent") -> float:
        if not (self.enable_timing and end.enable_timing):
            raise SimulatedGPUError(
                "elapsed_time needs events made with Event(enable_timing=True); the events here have no timing"
            )
        if not (self.recorded and end.recorded):
            raise SimulatedGPUError("elapsed_time read an event that was never recorded: call .record() on both events")
        if self.time_ms is None or end.time_ms is None:
            raise SimulatedGPUError(
                "elapsed_time read an event the device has not reached yet: call synchronize() after the "
                "timed calls and before reading the times"
            )
        return end.time_ms - self.time_ms


class SimulatedGPU:
    """One device queue and a device clock in milliseconds."""

    def __init__(self, durations_ms: Sequence[float]):
        self.durations_ms = [float(d) for d in durations_ms]
        self.calls = 0
        self.queue: list[tuple[str, object]] = []
        self.clock_ms = 0.0
        self.syncs = 0

    def kernel(self, *args, **kwargs) -> None:
        """The function to time: queues one piece of work and returns immediately."""
        d = self.durations_ms[min(self.calls, len(self.durations_ms) - 1)]
        self.calls += 1
        self.queue.append(("work", d))

    def Event(self, enable_timing: bool = False, **kwargs) -> SimulatedEvent:  # noqa: N802 (like torch.cuda.Event)
        return SimulatedEvent(self, enable_timing, **kwargs)

    def synchronize(self, device=None) -> None:
        """Wait until everything queued is done."""
        self.syncs += 1
        self.drain()

    def drain(self, until: SimulatedEvent | None = None) -> None:
        while self.queue:
            kind, item = self.queue.pop(0)
            if kind == "work":
                self.clock_ms += item
            else:
                item.time_ms = self.clock_ms
                if item is until:
                    return

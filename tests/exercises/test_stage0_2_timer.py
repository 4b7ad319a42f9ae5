"""Graded: timing GPU work with device events (exercises/stage0_measure/timer.py).

The learner's ``time_gpu`` runs against a simulated asynchronous GPU
(``tests/simulated_gpu.py``): calls only queue work of known durations, so the
right answer is known exactly, and the usual mistakes give recognisably wrong
ones.
"""

from __future__ import annotations

import random
import statistics

import pytest
from simulated_gpu import SimulatedGPU, SimulatedGPUError

TOPIC = "stage0_measure/timer"

gpu_timer = pytest.mark.exercise("gpu_timer", stage=0, points=2, title="Time GPU work with device events")


def _run(time_gpu, gpu: SimulatedGPU, warmup: int, reps: int) -> float:
    """Call the learner's timer on the simulated device; its errors become the learner's message."""
    try:
        got = time_gpu(gpu.kernel, warmup=warmup, reps=reps, Event=gpu.Event, synchronize=gpu.synchronize)
    except SimulatedGPUError as exc:
        raise AssertionError(str(exc)) from exc
    assert isinstance(got, (int, float)), f"time_gpu should return a number of milliseconds, got {type(got).__name__}"
    return float(got)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * abs(b) + 1e-9


def _check(got: float, gpu: SimulatedGPU, warmup: int, reps: int) -> None:
    """Compare with the median of the timed calls' simulated durations; explain the usual mistakes."""
    durations = [gpu.durations_ms[min(i, len(gpu.durations_ms) - 1)] for i in range(warmup + reps)]
    timed = durations[warmup:]
    want = statistics.median(timed)
    if not _close(got, want):
        if got < 0:
            raise AssertionError(
                "a time came out negative: start.elapsed_time(end) is the time from start to end, not the reverse"
            )
        if got < 0.05 * want:
            raise AssertionError(
                "the time is far too small: fn() only queues the work and returns at once, so time it with "
                "device events recorded before and after it, not with the host clock"
            )
        if _close(got, statistics.median(durations[:reps])) or _close(got, statistics.median(durations)):
            raise AssertionError(
                "the first calls compile the kernel and are slow: call fn warmup times, untimed, before the timed calls"
            )
        if _close(got, statistics.fmean(timed)) or _close(got, sum(timed) / len(timed)):
            raise AssertionError("report the median of the timed calls, not the mean: a few slow runs pull the mean up")
        if _close(got, min(timed)):
            raise AssertionError("report the median of the timed calls, not the fastest one")
    assert gpu.calls == warmup + reps, (
        f"fn should be called warmup + reps times, {warmup} untimed then {reps} timed, "
        f"{warmup + reps} in all (it was called {gpu.calls} times)"
    )
    assert _close(got, want), (
        f"time_gpu should return the median of the {reps} timed calls, {want:.4f} ms here (got {got:.4f} ms)"
    )


def _odd(r: random.Random, lo: int, hi: int) -> int:
    return r.choice([n for n in range(lo, hi + 1) if n % 2])


@gpu_timer
def test_times_the_device_not_the_host(impl, rng):
    time_gpu = impl.load(TOPIC).time_gpu
    r = random.Random(rng.initial_seed())
    warmup, reps = r.randint(1, 4), _odd(r, 9, 25)
    base = r.uniform(0.4, 6.0)
    gpu = SimulatedGPU([base * r.uniform(0.9, 1.1) for _ in range(warmup + reps)])
    _check(_run(time_gpu, gpu, warmup, reps), gpu, warmup, reps)


@gpu_timer
def test_warm_up_calls_are_not_timed(impl, rng):
    time_gpu = impl.load(TOPIC).time_gpu
    r = random.Random(rng.initial_seed())
    warmup = r.randint(4, 7)
    reps = _odd(r, warmup + 1, 2 * warmup - 1)  # fewer than twice warmup: untimed-warm-up mistakes show
    base = r.uniform(0.4, 6.0)
    compile_ms = [base * r.uniform(40, 100) for _ in range(warmup)]  # compiling, autotuning
    gpu = SimulatedGPU(compile_ms + [base * r.uniform(0.95, 1.05) for _ in range(reps)])
    _check(_run(time_gpu, gpu, warmup, reps), gpu, warmup, reps)


@gpu_timer
def test_median_ignores_outliers(impl, rng):
    time_gpu = impl.load(TOPIC).time_gpu
    r = random.Random(rng.initial_seed())
    warmup, reps = r.randint(2, 4), _odd(r, 21, 41)
    base = r.uniform(0.4, 6.0)
    steady = [base * r.uniform(0.97, 1.03) for _ in range(reps)]
    for i in r.sample(range(reps), reps // 6):  # a few runs disturbed by something else on the machine
        steady[i] = base * r.uniform(5, 20)
    gpu = SimulatedGPU([base * 50] + [base] * (warmup - 1) + steady)
    _check(_run(time_gpu, gpu, warmup, reps), gpu, warmup, reps)

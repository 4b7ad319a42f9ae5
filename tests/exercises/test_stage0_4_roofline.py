"""Graded: the roofline model (exercises/stage0_measure/roofline.py).

Random devices and intensities on both sides of the ridge point, and for
``bound`` some exactly on it (where the docstring says "compute": `<` and `<=`
must give different grades).
"""

from __future__ import annotations

import math
import random

import pytest

TOPIC = "stage0_measure/roofline"

roofline = pytest.mark.exercise("roofline", stage=0, points=2, title="Roofline: attainable speed and the bound")


def _device(r: random.Random) -> tuple[float, float]:
    """A random device: peak TFLOP/s and bandwidth GB/s, log-uniform over today's GPUs and CPUs."""
    peak = 10 ** r.uniform(0.0, 3.3)  # 1 .. 2000 TFLOP/s
    bw = 10 ** r.uniform(1.7, 3.9)  # 50 .. 8000 GB/s
    return peak, bw


def _intensities(r: random.Random, ridge: float) -> list[float]:
    """Intensities on both sides of the ridge (never on it), some close to it, some far."""
    below = [ridge / 10 ** r.uniform(0.05, 0.5), ridge / 10 ** r.uniform(0.5, 2.5)]
    above = [ridge * 10 ** r.uniform(0.05, 0.5), ridge * 10 ** r.uniform(0.5, 2.5)]
    out = below + above
    r.shuffle(out)
    return out


def _cases(r: random.Random, n_devices: int) -> list[tuple[float, float, float]]:
    """(intensity, peak, bandwidth) triples."""
    cases = []
    for _ in range(n_devices):
        peak, bw = _device(r)
        cases += [(i, peak, bw) for i in _intensities(r, peak * 1000 / bw)]
    return cases


# Ways of writing "intensity < ridge point": each must say "compute" exactly at the ridge point,
# and its `<=` twin "memory". Ridge cases are kept only where all of them agree, so that float
# rounding can never decide between a right and a wrong answer.
_BELOW_RIDGE = [
    lambda i, p, b: (i, p * 1000 / b),
    lambda i, p, b: (i * b / 1000, p),
    lambda i, p, b: (i * b, p * 1000),
    lambda i, p, b: (i, p / b * 1000),
    lambda i, p, b: (i, p / (b / 1000)),
    lambda i, p, b: (min(p, i * b / 1000), p),
    lambda i, p, b: (i * b * 1e-3, p),
    lambda i, p, b: (i, p * 1e3 / b),
    lambda i, p, b: (i * (b / 1000), p),
    lambda i, p, b: (i, p * 1e12 / (b * 1e9)),
    lambda i, p, b: (i * b * 1e9, p * 1e12),
]


def _ridge_cases(r: random.Random, n: int) -> list[tuple[float, float, float]]:
    """n (intensity, peak, bandwidth) triples with the intensity exactly at the ridge point."""
    cases = []
    while len(cases) < n:
        p, b = float(r.randint(1, 2000)), float(2 ** r.randint(6, 13))  # 1..2000 TFLOP/s, 64..8192 GB/s
        i = p * 1000 / b
        if all(x >= y for x, y in (f(i, p, b) for f in _BELOW_RIDGE)) and all(
            x <= y for x, y in (f(i, p, b) for f in _BELOW_RIDGE)
        ):  # every way of writing it lands exactly on the ridge
            cases.append((i, p, b))
    return cases


def _matches(got: list, model, cases) -> bool:
    """Whether ``got`` is what ``model(intensity, peak, bw)`` gives on every case."""
    for g, (i, p, b) in zip(got, cases):
        m = model(i, p, b)
        same = g == m if isinstance(m, str) else isinstance(g, (int, float)) and math.isclose(g, m, rel_tol=1e-9)
        if not same:
            return False
    return True


# Usual wrong answers, with what to say about each.
_ATTAINABLE_MISTAKES = [
    (lambda i, p, b: min(p, i * b), "intensity * bandwidth_gbs is in GFLOP/s: divide by 1000 to get TFLOP/s "
     "before comparing it with the peak"),
    (lambda i, p, b: min(p, i * b / 1e6), "intensity * bandwidth_gbs is in GFLOP/s: divide by 1000 (not 10**6) "
     "to get TFLOP/s"),
    (lambda i, p, b: max(p, i * b / 1000), "the roof is the lower of the two limits: min(peak, intensity * "
     "bandwidth), not max"),
    (lambda i, p, b: i * b / 1000, "the memory roof stops at the compute peak: return min(peak, intensity * "
     "bandwidth / 1000)"),
]  # fmt: skip

_BOUND_MISTAKES = [
    (lambda i, p, b: "memory" if i <= p * 1000 / b else "compute", "at the ridge point itself an op counts as "
     "compute-bound: return \"memory\" only when the intensity is strictly below the ridge (<, not <=)"),
    (lambda i, p, b: "compute" if i < p * 1000 / b else "memory", "low intensity means few FLOPs per byte: "
     "below the ridge point an op waits for memory (\"memory\"), above it for arithmetic (\"compute\")"),
    (lambda i, p, b: "memory" if i < p / b else "compute", "the ridge point is peak_tflops * 1000 / "
     "bandwidth_gbs FLOP/byte: TFLOP/s and GB/s differ by a factor 1000"),
    (lambda i, p, b: "memory" if i < p * 1e6 / b else "compute", "the ridge point is peak_tflops * 1000 / "
     "bandwidth_gbs FLOP/byte: TFLOP/s and GB/s differ by a factor 1000"),
]  # fmt: skip


@roofline
def test_attainable_tflops(impl, rng):
    f = impl.load(TOPIC).attainable_tflops
    cases = _cases(random.Random(rng.initial_seed()), 5)
    got = [f(i, p, b) for i, p, b in cases]
    if _matches(got, lambda i, p, b: min(p, i * b / 1000), cases):
        return
    for model, message in _ATTAINABLE_MISTAKES:
        if _matches(got, model, cases):
            raise AssertionError(message)
    i, p, b, g = next((i, p, b, g) for g, (i, p, b) in zip(got, cases)
                      if not _matches([g], lambda i, p, b: min(p, i * b / 1000), [(i, p, b)]))  # fmt: skip
    raise AssertionError(
        f"attainable_tflops({i:.4g}, {p:.4g}, {b:.4g}) should be min(peak, intensity * bandwidth / 1000) = "
        f"{min(p, i * b / 1000):.6g} TFLOP/s (got {g!r})"
    )


@roofline
def test_bound(impl, rng):
    f = impl.load(TOPIC).bound
    r = random.Random(rng.initial_seed())
    cases = _cases(r, 6) + _ridge_cases(r, 4)
    r.shuffle(cases)
    got = [f(i, p, b) for i, p, b in cases]
    for g in got:
        assert g in ("memory", "compute"), f'bound should return the string "memory" or "compute", got {g!r}'
    right = lambda i, p, b: "memory" if i < p * 1000 / b else "compute"  # noqa: E731
    if _matches(got, right, cases):
        return
    for model, message in _BOUND_MISTAKES:
        if _matches(got, model, cases):
            raise AssertionError(message)
    i, p, b, g = next((i, p, b, g) for g, (i, p, b) in zip(got, cases) if g != right(i, p, b))
    raise AssertionError(
        "below the ridge point (peak / bandwidth, in FLOP/byte) an op is memory-bound; at or above it, compute-bound "
        f"(intensity {i:.4g} FLOP/byte, ridge {p * 1000 / b:.4g}: expected {right(i, p, b)!r}, got {g!r})"
    )

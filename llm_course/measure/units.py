"""Speeds as people read them: three significant digits and a unit that fits.

    format_bandwidth(4213.0)     # '4.21 TB/s'
    format_bandwidth(0.000954)   # '954 kB/s'   (a kernel in Triton's interpreter)
    format_flops(0.0272)         # '27.2 GFLOP/s'

A GPU moves terabytes a second; the same kernel in Triton's interpreter on a CPU
moves kilobytes. A fixed format (``f"{gbs:.1f} GB/s"``) prints the second as
"0.0 GB/s", which says nothing; these functions pick the prefix instead.
Units are decimal, as datasheets count them (1 GB = 10**9 bytes).
"""

from __future__ import annotations

import math

_PREFIXES = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]


def format_si(value: float, unit: str) -> str:
    """``value`` (in plain units, e.g. bytes/s) with 3 significant digits and an SI prefix."""
    if not math.isfinite(value):
        return f"{value} {unit}"
    if value == 0:
        return f"0 {unit}"
    sign, value = ("-" if value < 0 else ""), abs(value)
    for scale, prefix in _PREFIXES:
        shown = float(f"{value / scale:.3g}")  # rounded as printed: 999.6 GB/s is shown as 1 TB/s
        if shown >= 1 or scale == 1.0:
            digits = f"{shown:.3g}" if shown < 1000 else f"{shown:,.0f}"  # 1000 or more: beyond tera only
            return f"{sign}{digits} {prefix}{unit}"
    raise AssertionError("unreachable: the last prefix always returns")


def format_bandwidth(gbs: float) -> str:
    """A bandwidth given in GB/s, e.g. ``'59.1 GB/s'``, ``'954 kB/s'``, ``'4.21 TB/s'``."""
    return format_si(gbs * 1e9, "B/s")


def format_flops(tflops: float) -> str:
    """A compute speed given in TFLOP/s, e.g. ``'756 TFLOP/s'``, ``'27.2 GFLOP/s'``, ``'22.1 kFLOP/s'``."""
    return format_si(tflops * 1e12, "FLOP/s")

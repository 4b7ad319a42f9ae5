"""Stage 0 exercises: the roofline model.

A device computes at most ``peak_tflops`` TFLOP/s (10**12 FLOP a second) and
moves at most ``bandwidth_gbs`` GB/s (10**9 bytes a second). An op with an
arithmetic intensity of ``intensity`` FLOP/byte (its FLOPs divided by the
bytes it moves) can therefore run no faster than the lower of two roofs:

* the compute roof: ``peak_tflops``;
* the memory roof: ``intensity * bandwidth``, every byte bringing ``intensity`` FLOPs.

The two roofs meet at the ridge point, ``intensity = peak / bandwidth`` (in
matching units): below it the op waits for memory, above it for arithmetic.
"""


def attainable_tflops(intensity: float, peak_tflops: float, bandwidth_gbs: float) -> float:
    """The best speed, in TFLOP/s, of an op with ``intensity`` FLOP/byte on this device.

    Args:
        intensity: FLOP/byte of the op (> 0).
        peak_tflops: the compute roof in TFLOP/s.
        bandwidth_gbs: the memory bandwidth in GB/s.

    Hint: ``intensity * bandwidth_gbs`` is in GFLOP/s; convert it before comparing with TFLOP/s.
    """
    # BEGIN EXERCISE roofline
    # stub raises: "compute the roofline's attainable TFLOP/s"
    return min(peak_tflops, intensity * bandwidth_gbs / 1000)
    # END EXERCISE roofline


def bound(intensity: float, peak_tflops: float, bandwidth_gbs: float) -> str:
    """What limits an op with ``intensity`` FLOP/byte: "memory" or "compute".

    Return "memory" when the memory roof is the lower one (intensity below the
    ridge point), "compute" otherwise (at or above the ridge point).

    Hint: find the ridge point in FLOP/byte; mind the units (TFLOP/s and GB/s).
    """
    # BEGIN EXERCISE roofline
    # stub raises: "say whether the op is memory- or compute-bound"
    ridge = peak_tflops * 1000 / bandwidth_gbs
    return "memory" if intensity < ridge else "compute"
    # END EXERCISE roofline

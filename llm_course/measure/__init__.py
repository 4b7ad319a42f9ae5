"""How to measure: time work correctly, count its FLOPs and bytes, place it on a roofline.

* ``timer.py``    -- :func:`benchmark` (warm-up, device events, median), :func:`rotating_inputs`
* ``flops.py``    -- FLOPs and minimum bytes of elementwise ops, norms, softmax, matmul, attention
* ``peaks.py``    -- datasheet peaks of common GPUs, :func:`lookup` by device name
* ``roofline.py`` -- measured ceilings, the roofline model, :func:`plot_roofline`
* ``units.py``    -- :func:`format_bandwidth`, :func:`format_flops`: 3 digits, the right prefix
"""

from llm_course.measure.flops import (
    arithmetic_intensity,
    attention_backward_flops,
    attention_bytes,
    attention_flops,
    dtype_bytes,
    elementwise_bytes,
    elementwise_flops,
    layernorm_bytes,
    layernorm_flops,
    matmul_bytes,
    matmul_flops,
    rmsnorm_bytes,
    rmsnorm_flops,
    softmax_bytes,
    softmax_flops,
)
from llm_course.measure.peaks import KNOWN_PEAKS, Peak, device_peak, lookup
from llm_course.measure.roofline import (
    Ceilings,
    RooflinePoint,
    attainable,
    bound,
    measure_bandwidth,
    measure_ceilings,
    measure_matmul,
    plot_roofline,
    ridge_point,
    roofline_seconds,
)
from llm_course.measure.timer import Timing, benchmark, event_times, rotating_inputs, time_gpu, time_region
from llm_course.measure.units import format_bandwidth, format_flops, format_si

__all__ = [
    "arithmetic_intensity", "attention_backward_flops", "attention_bytes", "attention_flops", "dtype_bytes",
    "elementwise_bytes", "elementwise_flops", "layernorm_bytes", "layernorm_flops", "matmul_bytes",
    "matmul_flops", "rmsnorm_bytes", "rmsnorm_flops", "softmax_bytes", "softmax_flops",
    "KNOWN_PEAKS", "Peak", "device_peak", "lookup",
    "Ceilings", "RooflinePoint", "attainable", "bound", "measure_bandwidth", "measure_ceilings",
    "measure_matmul", "plot_roofline", "ridge_point", "roofline_seconds",
    "format_bandwidth", "format_flops", "format_si",
    "Timing", "benchmark", "event_times", "rotating_inputs", "time_gpu", "time_region",
]  # fmt: skip

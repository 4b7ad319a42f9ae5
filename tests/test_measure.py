"""llm_course.measure: the timer, the FLOP and byte counts, the peaks table, the roofline."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from simulated_gpu import SimulatedGPU

from llm_course.measure import flops, peaks, roofline, timer

# --- timer -------------------------------------------------------------------------------


def test_benchmark_cpu_sleep_gives_a_sane_median():
    t = timer.benchmark(lambda: time.sleep(0.002), warmup=1, reps=7, device="cpu")
    assert isinstance(t, timer.Timing) and len(t.times_ms) == 7
    assert 1.9 <= t.median_ms < 20, t
    assert t.min_ms <= t.median_ms and t.min_ms <= t.mean_ms
    assert t.seconds == pytest.approx(t.median_ms / 1e3)
    assert "median" in str(t)


def test_benchmark_rotates_through_the_input_sets():
    seen = []
    sets = [(i, f"set{i}") for i in range(3)]
    timer.benchmark(lambda i, tag: seen.append((i, tag)), sets, warmup=2, reps=7, device="cpu")
    assert [s[0] for s in seen] == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert seen[1] == (1, "set1")


def test_benchmark_flush_cache_on_cpu():
    calls = []
    t = timer.benchmark(lambda: calls.append(1), warmup=0, reps=3, device="cpu", flush_cache=True)
    assert len(calls) == 3 and len(t.times_ms) == 3


def test_rotating_inputs_counts():
    made = []

    def make():
        made.append(1)
        return (len(made),)

    assert len(timer.rotating_inputs(make, bytes_per_set=10, min_total_bytes=35)) == 4
    assert len(timer.rotating_inputs(make, bytes_per_set=100, min_total_bytes=35)) == 1
    assert len(timer.rotating_inputs(make, bytes_per_set=1, min_total_bytes=10**6, max_sets=5)) == 5
    sets = timer.rotating_inputs(lambda: (torch.zeros(4),), bytes_per_set=16)
    assert 1 <= len(sets) <= 64 and all(isinstance(s, tuple) for s in sets)


def test_event_times_on_a_simulated_gpu():
    durations = [50.0, 40.0] + [1.0, 1.5, 9.0, 1.25, 1.0]
    gpu = SimulatedGPU(durations)
    times = timer.event_times(gpu.kernel, warmup=2, reps=5, Event=gpu.Event, synchronize=gpu.synchronize)
    assert times == pytest.approx(durations[2:])
    assert gpu.calls == 7

    gpu = SimulatedGPU(durations)
    ms = timer.time_gpu(gpu.kernel, warmup=2, reps=5, Event=gpu.Event, synchronize=gpu.synchronize)
    assert ms == pytest.approx(1.25)


def test_event_times_rejects_bad_counts():
    gpu = SimulatedGPU([1.0])
    with pytest.raises(ValueError):
        timer.event_times(gpu.kernel, warmup=0, reps=0, Event=gpu.Event, synchronize=gpu.synchronize)


def test_time_region_measures_a_block():
    with timer.time_region("cpu") as t:
        time.sleep(0.003)
    assert 2.9 <= t.ms < 100


@pytest.mark.gpu
def test_benchmark_on_the_gpu():
    from llm_course import get_device

    dev = get_device()
    a = torch.randn(2048, 2048, device=dev, dtype=torch.bfloat16)
    t = timer.benchmark(torch.matmul, [(a, a)], warmup=3, reps=10)
    assert 0 < t.median_ms < 100
    c = roofline.measure_ceilings(quick=True)
    assert c.bandwidth_gbs > 100 and c.flops_tflops > 1 and c.measured


# --- FLOPs and bytes, against brute-force counts ---------------------------------------


class Counter:
    """Counts the arithmetic done on the numbers it wraps."""

    def __init__(self):
        self.ops = 0

    def num(self, v: float) -> "Num":
        return Num(v, self)


class Num:
    def __init__(self, v, counter):
        self.v, self.c = v, counter

    def _op(self, other, f):
        self.c.ops += 1
        return Num(f(self.v, other.v if isinstance(other, Num) else other), self.c)

    def __add__(self, o):
        return self._op(o, lambda a, b: a + b)

    __radd__ = __add__

    def __sub__(self, o):
        return self._op(o, lambda a, b: a - b)

    def __mul__(self, o):
        return self._op(o, lambda a, b: a * b)

    def __truediv__(self, o):
        return self._op(o, lambda a, b: a / b)

    def exp(self):
        return self._op(None, lambda a, _: math.exp(a))

    def maximum(self, o):
        return self._op(o, max)


def test_matmul_flops_brute_force():
    M, N, K = 3, 5, 7
    c = Counter()
    A = [[c.num(1.0) for _ in range(K)] for _ in range(M)]
    B = [[c.num(1.0) for _ in range(N)] for _ in range(K)]
    for i in range(M):
        for j in range(N):
            acc = 0.0
            for k in range(K):
                acc = acc + A[i][k] * B[k][j]
    assert c.ops == flops.matmul_flops(M, N, K) == 2 * M * N * K


def test_softmax_flops_brute_force():
    rows, cols = 4, 9
    c = Counter()
    x = [[c.num(float(i + j)) for j in range(cols)] for i in range(rows)]
    for row in x:
        m = c.num(-math.inf)
        for v in row:
            m = v.maximum(m)  # 1 comparison
        e = [(v - m).exp() for v in row]  # subtract, exp
        s = 0.0
        for v in e:
            s = v + s  # sum
        [v / s for v in e]  # divide
    assert c.ops == flops.softmax_flops(rows, cols) == 5 * rows * cols


def test_attention_flops_brute_force():
    B, H, T, S, D = 1, 2, 3, 5, 4
    c = Counter()
    for _ in range(B * H):
        q = [[c.num(0.1) for _ in range(D)] for _ in range(T)]
        k = [[c.num(0.2) for _ in range(D)] for _ in range(S)]
        v = [[c.num(0.3) for _ in range(D)] for _ in range(S)]
        for t in range(T):
            scores = []
            for s in range(S):
                acc = 0.0
                for d in range(D):
                    acc = acc + q[t][d] * k[s][d]
                scores.append(acc)
            p = [c.num(1.0 / S) for _ in range(S)]  # the softmax is not counted
            for d in range(D):
                acc = 0.0
                for s in range(S):
                    acc = acc + p[s] * v[s][d]
    assert c.ops == flops.attention_flops(B, H, T, S, D) == 4 * B * H * T * S * D
    assert flops.attention_flops(B, H, T, S, D, causal=True) == 2 * B * H * T * S * D
    # causal, T == S: the exact share of visible scores tends to 1/2
    T = S = 512
    exact = T * (T + 1) // 2 * 4 * D
    assert flops.attention_flops(1, 1, T, S, D, causal=True) == pytest.approx(exact, rel=0.01)
    assert flops.attention_backward_flops(B, H, T, S, D) == 2.5 * flops.attention_flops(B, H, T, S, D)


def test_bytes_match_tensor_sizes():
    M, N, K = 6, 10, 3
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        a, b = torch.zeros(M, K, dtype=dt), torch.zeros(K, N, dtype=dt)
        c = a @ b
        eb = flops.dtype_bytes(dt)
        assert flops.matmul_bytes(M, N, K, eb) == a.nbytes + b.nbytes + c.nbytes
        x = torch.zeros(M, N, dtype=dt)
        assert flops.softmax_bytes(M, N, eb) == 2 * x.nbytes
        w = torch.zeros(N, dtype=dt)
        assert flops.rmsnorm_bytes(M, N, eb) == 2 * x.nbytes + w.nbytes
        assert flops.layernorm_bytes(M, N, eb) == 2 * x.nbytes + 2 * w.nbytes
        assert flops.layernorm_bytes(M, N, eb, bias=False) == 2 * x.nbytes + w.nbytes
        assert flops.elementwise_bytes(x.numel(), 2, 1, eb) == 3 * x.nbytes
    assert flops.matmul_bytes(M, N, K, 2, out_dtype_bytes=4) == (M * K + K * N) * 2 + M * N * 4
    q = torch.zeros(2, 8, 5, 16, dtype=torch.bfloat16)
    kv = torch.zeros(2, 2, 7, 16, dtype=torch.bfloat16)
    assert flops.attention_bytes(2, 8, 5, 7, 16, 2, kv_heads=2) == 2 * q.nbytes + 2 * kv.nbytes


def test_flops_per_element_and_intensity():
    assert flops.elementwise_flops(10) == 10 and flops.elementwise_flops(10, 2) == 20
    assert flops.rmsnorm_flops(3, 5) == 60 and flops.layernorm_flops(3, 5) == 105
    assert flops.layernorm_flops(3, 5, bias=False) == 90
    assert flops.arithmetic_intensity(100, 25) == 4.0
    with pytest.raises(ValueError):
        flops.arithmetic_intensity(1, 0)
    # a big square bf16 matmul: n/3 FLOP/byte
    n = 3000
    i = flops.arithmetic_intensity(flops.matmul_flops(n, n, n), flops.matmul_bytes(n, n, n, 2))
    assert i == pytest.approx(n / 3)


def test_dtype_bytes():
    assert flops.dtype_bytes(torch.float32) == 4 and flops.dtype_bytes(torch.bfloat16) == 2
    assert flops.dtype_bytes("bf16") == 2 and flops.dtype_bytes("fp32") == 4 and flops.dtype_bytes("torch.float16") == 2
    assert flops.dtype_bytes("int8") == 1
    with pytest.raises(ValueError):
        flops.dtype_bytes("fp13")


# --- peaks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ],
)
def test_peaks_lookup(device_name, key):
    assert peaks.lookup(device_name) is peaks.KNOWN_PEAKS[key]


def test_peaks_table():
    h100 = peaks.KNOWN_PEAKS["H100 SXM"]
    assert (h100.bf16_tflops, h100.fp32_tflops, h100.bandwidth_gbs) == (989.0, 67.0, 3350.0)
    assert h100.ridge_point == pytest.approx(295, abs=1)
    assert h100.tflops("bf16") == 989.0 and h100.tflops(torch.float32) == 67.0
    assert peaks.KNOWN_PEAKS["H200"].bandwidth_gbs == 4800.0
    for name in (None, "", "Tesla K80", "NVIDIA GH200 480GB", "cpu"):
        assert peaks.lookup(name) is None
    assert peaks.device_peak("cpu") is None


# --- roofline ----------------------------------------------------------------------------


def test_attainable_ridge_and_bound():
    peak, bw = 989.0, 3350.0
    ridge = roofline.ridge_point(peak, bw)
    assert ridge == pytest.approx(295.2, abs=0.1)
    assert roofline.attainable(1.0, peak, bw) == pytest.approx(3.35)
    assert roofline.attainable(1e4, peak, bw) == peak
    assert roofline.attainable(ridge, peak, bw) == pytest.approx(peak)
    arr = roofline.attainable(np.array([1.0, 1e4]), peak, bw)
    assert arr.shape == (2,) and arr[1] == peak
    assert roofline.bound(10, peak, bw) == "memory" and roofline.bound(1000, peak, bw) == "compute"
    assert roofline.roofline_seconds(2e12, 1e9, 1000, 1000) == pytest.approx(2e-3)  # compute-bound
    assert roofline.roofline_seconds(1e9, 1e12, 1000, 1000) == pytest.approx(1.0)  # memory-bound


def test_roofline_points_and_ceilings():
    ceil = roofline.Ceilings.from_peak(peaks.KNOWN_PEAKS["H100 SXM"], "bf16")
    assert not ceil.measured and ceil.flops_tflops == 989.0 and "ridge" in str(ceil)
    p = roofline.RooflinePoint("add", flops=1e9, bytes=12e9, seconds=4e-3)
    assert p.intensity == pytest.approx(1 / 12) and p.tflops == pytest.approx(0.25) and p.gbs == pytest.approx(3000)
    pred = roofline.RooflinePoint.predicted("mm", flops.matmul_flops(4096, 4096, 4096),
                                            flops.matmul_bytes(4096, 4096, 4096, 2), ceil)  # fmt: skip
    assert pred.fraction_of_roof(ceil) == pytest.approx(1.0)
    t = timer.Timing.from_times([1.0, 2.0, 3.0])
    assert roofline.RooflinePoint.from_timing("x", 1, 1, t).seconds == pytest.approx(2e-3)


def test_plot_roofline_log_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceil = roofline.Ceilings("test device", 1000.0, 100.0, "bf16", measured=True)
    pts = [roofline.RooflinePoint("add", 1e9, 12e9, 0.02), roofline.RooflinePoint("matmul", 1e12, 1e9, 0.02)]
    fig = roofline.plot_roofline(ceil, pts, datasheet=peaks.KNOWN_PEAKS["H100 SXM"], title="t")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    texts = [t.get_text() for t in ax.texts]
    assert "add" in texts and "matmul" in texts and any("ridge" in t for t in texts)
    assert len(ax.get_legend().get_texts()) == 2
    plt.close(fig)
    fig2, ax2 = plt.subplots()
    assert roofline.plot_roofline(ceil, ax=ax2) is fig2
    plt.close(fig2)


def test_measure_ceilings_quick_on_cpu():
    t0 = time.perf_counter()
    c = roofline.measure_ceilings("cpu", quick=True)
    assert c.measured and c.dtype == "fp32" and c.bandwidth_gbs > 0 and c.flops_tflops > 0
    assert time.perf_counter() - t0 < 10


def test_cpu_roofline_from_its_own_ceilings_and_the_note_above_the_roof():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = roofline.measure_ceilings("cpu", quick=True)  # the CPU's own roofs, not a datasheet's
    assert c.name.startswith("CPU") and math.isfinite(c.bandwidth_gbs) and math.isfinite(c.flops_tflops)
    assert c.ridge_point > 0
    n = 2**20  # an fp32 add of 1M elements
    f, nb = flops.elementwise_flops(n), flops.elementwise_bytes(n, 2, 1, 4)
    on_roof = roofline.RooflinePoint.predicted("add", f, nb, c)
    below = roofline.RooflinePoint("add, twice the least time", f, nb, 2 * on_roof.seconds)
    above = roofline.RooflinePoint("add, from the cache", f, nb, on_roof.seconds / 3)
    assert on_roof.fraction_of_roof(c) == pytest.approx(1.0)
    assert below.fraction_of_roof(c) == pytest.approx(0.5) and below.gbs == pytest.approx(c.bandwidth_gbs / 2)
    assert above.fraction_of_roof(c) == pytest.approx(3.0)

    def notes(points):
        fig = roofline.plot_roofline(c, points)
        texts = [t.get_text() for t in fig.axes[0].texts]
        plt.close(fig)
        return [t for t in texts if t.startswith("Above the measured roof")]

    assert notes([below, on_roof]) == []  # on or below the roof: nothing to explain
    (note,) = notes([below, above])
    assert "add, from the cache" in note and "caches" in note and "twice" not in note


@pytest.mark.parametrize(
    "gbs, text",
    [(4213.0, "4.21 TB/s"), (59.12, "59.1 GB/s"), (0.9996, "1 GB/s"), (999.6, "1 TB/s"), (0.0123, "12.3 MB/s"),
     (0.000954, "954 kB/s"), (1e-12, "0.001 B/s"), (0.0, "0 B/s"), (5e6, "5,000 TB/s")],
)  # fmt: skip
def test_format_bandwidth_never_prints_zero_for_a_slow_kernel(gbs, text):
    from llm_course.measure import format_bandwidth

    assert format_bandwidth(gbs) == text


def test_format_flops():
    from llm_course.measure import format_flops, format_si

    assert format_flops(756.4) == "756 TFLOP/s"
    assert format_flops(0.0272) == "27.2 GFLOP/s"
    assert format_flops(2.214e-05) == "22.1 MFLOP/s"
    assert format_si(float("inf"), "B/s") == "inf B/s" and format_si(-3.2e9, "B/s") == "-3.2 GB/s"


def test_wall_time_counts_every_call():
    from llm_course.measure.timer import wall_time

    calls = []
    ms = wall_time(lambda: calls.append(time.sleep(0.002)), warmup=2, reps=5)
    assert len(calls) == 7
    assert ms >= 2.0  # each timed call sleeps 2 ms: the wall time per call cannot be less
    with pytest.raises(ValueError, match="reps"):
        wall_time(lambda: None, warmup=0, reps=0)


def test_wall_time_takes_the_median_round():
    """One slow round (a hiccup of the host) does not move the result; every round runs every call."""
    from llm_course.measure.timer import wall_time

    calls = []

    def fn():
        calls.append(None)
        time.sleep(0.05 if len(calls) == 3 else 0.001)  # the first round's second call stalls

    ms = wall_time(fn, warmup=1, reps=2, rounds=3)
    assert len(calls) == 7
    assert 1.0 <= ms < 5.0  # a mean over all calls would be about 9 ms; the stalled round alone 25 ms
    with pytest.raises(ValueError, match="rounds"):
        wall_time(fn, warmup=0, reps=1, rounds=0)

"""The roofline: how fast an op *can* run, from two numbers of the machine.

A device has a compute ceiling (``peak`` TFLOP/s) and a memory ceiling
(``bandwidth`` GB/s). An op that does F FLOPs and moves B bytes takes at least
``F / peak`` (compute) and at least ``B / bandwidth`` (memory), so its speed is
at most::

    attainable(I) = min(peak, I * bandwidth)        I = F / B, FLOP/byte

Plotted against I on log-log axes this is a slanted line (memory-bound: speed
grows with I) meeting a flat one (compute-bound) at the **ridge point**
``I = peak / bandwidth``. H100 SXM: 989 TFLOP/s / 3.35 TB/s = about 295 FLOP/byte.
An elementwise add (I below 1) is deep on the slanted side, a large matmul far
on the flat side; a kernel's dot below the roof says how much is left to gain.

Units: intensity in FLOP/byte, compute in TFLOP/s (1e12), bandwidth in GB/s (1e9),
so ``I * bandwidth_gbs`` is in GFLOP/s: divide by 1000 to compare with TFLOP/s.

:func:`measure_ceilings` measures both ceilings of the machine you run on (a
large copy, a large matmul); :func:`plot_roofline` draws them with your
kernels' measured points, and the datasheet roof beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from llm_course.device import get_device
from llm_course.measure.flops import matmul_flops
from llm_course.measure.peaks import Peak
from llm_course.measure.timer import Timing, benchmark


@dataclass
class Ceilings:
    """A machine's two roofs: memory bandwidth (GB/s) and compute (TFLOP/s) for ``dtype``."""

    name: str
    bandwidth_gbs: float
    flops_tflops: float
    dtype: str  # "bf16", "fp32", ...
    measured: bool  # True: measured here; False: from a datasheet

    @property
    def ridge_point(self) -> float:
        """FLOP/byte where the two roofs meet."""
        return ridge_point(self.flops_tflops, self.bandwidth_gbs)

    @classmethod
    def from_peak(cls, peak: Peak, dtype: str = "bf16") -> "Ceilings":
        """The datasheet roofs of a :class:`Peak` (``measured=False``)."""
        return cls(peak.name, peak.bandwidth_gbs, peak.tflops(dtype), dtype, measured=False)

    def __str__(self) -> str:
        kind = "measured" if self.measured else "datasheet"
        return (
            f"{self.name}: {self.bandwidth_gbs:,.0f} GB/s, {self.flops_tflops:,.4g} TFLOP/s {self.dtype} "
            f"({kind}); ridge at {self.ridge_point:.1f} FLOP/byte"
        )


# --- the model ---------------------------------------------------------------------------


def attainable(intensity, peak_tflops: float, bandwidth_gbs: float):
    """Best TFLOP/s at ``intensity`` FLOP/byte: ``min(peak, intensity * bandwidth / 1000)``.

    Works on a number or a numpy array of intensities.
    """
    memory_roof = np.asarray(intensity, dtype=float) * bandwidth_gbs / 1e3  # GFLOP/s -> TFLOP/s
    out = np.minimum(peak_tflops, memory_roof)
    return float(out) if out.ndim == 0 else out


def ridge_point(peak_tflops: float, bandwidth_gbs: float) -> float:
    """FLOP/byte where ``intensity * bandwidth == peak``: ``peak * 1000 / bandwidth``."""
    return peak_tflops * 1e3 / bandwidth_gbs


def bound(intensity: float, peak_tflops: float, bandwidth_gbs: float) -> str:
    """"memory" below the ridge point, "compute" at or above it."""
    return "memory" if intensity < ridge_point(peak_tflops, bandwidth_gbs) else "compute"


def roofline_seconds(flops: float, nbytes: float, peak_tflops: float, bandwidth_gbs: float) -> float:
    """The least time an op can take: the longer of its compute time and its memory time."""
    return max(flops / (peak_tflops * 1e12), nbytes / (bandwidth_gbs * 1e9))


@dataclass
class RooflinePoint:
    """One measured (or predicted) run of an op: FLOPs, bytes moved, seconds taken."""

    name: str
    flops: float
    bytes: float
    seconds: float

    @property
    def intensity(self) -> float:
        """FLOP/byte."""
        return self.flops / self.bytes

    @property
    def tflops(self) -> float:
        """Achieved TFLOP/s."""
        return self.flops / self.seconds / 1e12

    @property
    def gbs(self) -> float:
        """Achieved GB/s (with the minimum bytes of ``flops.py``)."""
        return self.bytes / self.seconds / 1e9

    def fraction_of_roof(self, ceilings: Ceilings) -> float:
        """Achieved / attainable at this intensity: 1.0 is on the roof."""
        return self.tflops / attainable(self.intensity, ceilings.flops_tflops, ceilings.bandwidth_gbs)

    @classmethod
    def from_timing(cls, name: str, flops: float, nbytes: float, timing: Timing) -> "RooflinePoint":
        """A point from :func:`benchmark`'s result (its median)."""
        return cls(name, flops, nbytes, timing.seconds)

    @classmethod
    def predicted(cls, name: str, flops: float, nbytes: float, ceilings: Ceilings) -> "RooflinePoint":
        """The point an op would reach exactly on the roof of ``ceilings``."""
        return cls(name, flops, nbytes, roofline_seconds(flops, nbytes, ceilings.flops_tflops, ceilings.bandwidth_gbs))


# --- measuring the ceilings ----------------------------------------------------------


def _device_name(dev: torch.device) -> str:
    if dev.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    return torch.cuda.get_device_name(dev)


def measure_bandwidth(
    device: torch.device | str | None = None, nbytes: int | None = None, *, warmup: int = 3, reps: int = 20
) -> float:
    """Memory bandwidth in GB/s: bytes read plus bytes written by a copy of ``nbytes`` bytes.

    The buffers must be much larger than the caches, or the copy measures the
    cache instead of the memory. Default size: 1 GiB on a GPU, 256 MiB on the CPU
    (a server CPU's last-level cache holds tens of MiB). A ceiling is the best the machine can do, so this
    uses the fastest run rather than the median (on a GPU they differ by about 1%;
    on a busy CPU by much more).
    """
    dev = torch.device(device) if device is not None else get_device()
    if nbytes is None:
        nbytes = 256 * 2**20 if dev.type == "cpu" else 2**30
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    t = benchmark(dst.copy_, [(src,)], warmup=warmup, reps=reps, device=dev)
    return 2 * n * 4 / (t.min_ms / 1e3) / 1e9  # a ceiling: the fastest run


def measure_matmul(
    device: torch.device | str | None = None,
    n: int | None = None,
    dtype: torch.dtype | None = None,
    *,
    warmup: int = 3,
    reps: int = 20,
) -> float:
    """Matmul speed in TFLOP/s of an (n, n) @ (n, n) product (torch, so cuBLAS on a GPU).

    Defaults: n=8192 in bfloat16 on a GPU (large enough to reach the tensor
    cores' plateau), n=1536 in float32 on the CPU (smaller products leave cores
    idle and would set the roof too low). Like :func:`measure_bandwidth`,
    it reports the fastest run.
    """
    dev = torch.device(device) if device is not None else get_device()
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    if n is None:
        n = 1536 if dev.type == "cpu" else 8192
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    t = benchmark(torch.matmul, [(a, b)], warmup=warmup, reps=reps, device=dev)
    return matmul_flops(n, n, n) / (t.min_ms / 1e3) / 1e12  # a ceiling: the fastest run


_SHORT_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def measure_ceilings(device: torch.device | str | None = None, quick: bool = False) -> Ceilings:
    """Measure both roofs of ``device`` (default: the course's device).

    On a GPU: a 1 GiB copy and an 8192^3 bf16 matmul (a second or two). On the
    CPU: a 256 MiB copy and a 1536^3 fp32 matmul (a few seconds on two cores);
    ``quick=True`` uses a 128 MiB copy, a 1024^3 matmul and fewer runs (about a
    second). These are the CPU's own roofs: what its cores and its memory do with
    PyTorch's compiled code. Ops whose data fit in the caches can run above the
    memory roof; :func:`plot_roofline` says so when one does.
    """
    dev = torch.device(device) if device is not None else get_device()
    cpu = dev.type == "cpu"
    dtype = torch.float32 if cpu else torch.bfloat16
    reps = 5 if quick else (10 if cpu else 20)
    if cpu:
        nbytes, n = (128 * 2**20, 1024) if quick else (256 * 2**20, 1536)  # copies several times a large L3 cache
    else:
        nbytes, n = (2**28, 4096) if quick else (2**30, 8192)
    bw = measure_bandwidth(dev, nbytes, warmup=2, reps=reps)
    tf = measure_matmul(dev, n, dtype, warmup=2, reps=reps)
    return Ceilings(_device_name(dev), bw, tf, _SHORT_DTYPE[dtype], measured=True)


# --- the plot ----------------------------------------------------------------------------


def plot_roofline(
    ceilings: Ceilings,
    points: Sequence[RooflinePoint] = (),
    datasheet: Peak | Ceilings | None = None,
    ax=None,
    title: str | None = None,
):
    """Draw the roofline of ``ceilings`` with ``points`` on it; returns the matplotlib Figure.

    Log-log axes: x is intensity (FLOP/byte), y is TFLOP/s. The roof of
    ``ceilings`` is solid, its ridge point marked; ``datasheet`` (a
    :class:`Peak`, taken in ``ceilings.dtype``, or :class:`Ceilings`) is drawn
    dashed beside it. Each point is a dot with its name. Pass ``ax`` to draw
    into an existing plot. A measured point more than 5% above a measured roof
    gets a note on the plot (:data:`ABOVE_ROOF_NOTE`) that says why that can happen.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5))
    else:
        fig = ax.figure
    roofs = [ceilings]
    if isinstance(datasheet, Peak):
        datasheet = Ceilings.from_peak(datasheet, ceilings.dtype)
    if datasheet is not None:
        roofs.append(datasheet)

    xs = [r.ridge_point for r in roofs] + [p.intensity for p in points]
    lo, hi = min(xs) / 10, max(xs) * 10
    ys = [r.flops_tflops for r in roofs] + [p.tflops for p in points]
    y_lo = min(min(ys), min(attainable(lo, r.flops_tflops, r.bandwidth_gbs) for r in roofs)) / 3
    y_hi = max(ys) * 3
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("TFLOP/s")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(title or f"Roofline: {ceilings.name}")
    fig.tight_layout()
    box = ax.get_position()
    x_per_pt = np.log10(hi / lo) / (box.width * fig.get_figwidth() * 72)  # decades per typographic point
    y_per_pt = np.log10(y_hi / y_lo) / (box.height * fig.get_figheight() * 72)
    placed: list[tuple[float, float, float]] = []  # (left x, y, width) of each label so far, in decades

    x = np.geomspace(lo, hi, 400)
    for roof, style, (dx, dy) in zip(roofs, ("-", "--"), ((6, -14), (-6, 6))):
        kind = "measured" if roof.measured else "datasheet"
        label = f"{roof.name} ({kind}): {roof.bandwidth_gbs:,.0f} GB/s, {roof.flops_tflops:,.4g} TFLOP/s {roof.dtype}"
        (line,) = ax.plot(x, attainable(x, roof.flops_tflops, roof.bandwidth_gbs), style, lw=2, label=label)
        r = roof.ridge_point
        ax.plot([r], [roof.flops_tflops], "o", color=line.get_color(), ms=5)
        text = f"ridge {r:.3g} FLOP/B"
        ax.annotate(text, (r, roof.flops_tflops), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                    color=line.get_color(), ha="left" if dx > 0 else "right")  # fmt: skip
        width = 4.8 * len(text) * x_per_pt  # about 4.8 points a character at font size 8
        left = np.log10(r) + dx * x_per_pt - (width if dx < 0 else 0)
        placed.append((left, np.log10(roof.flops_tflops) + dy * y_per_pt, width))

    # Each point's label goes right of its dot, moved down a line while it would overlap an earlier one.
    markers = "sD^vP*X<>p"
    for i, p in enumerate(points):
        ax.plot([p.intensity], [p.tflops], markers[i % len(markers)], ms=7, color=f"C{(i + 2) % 10}")
        lx, ly = np.log10(p.intensity) + 6 * x_per_pt, np.log10(p.tflops) + 4 * y_per_pt
        width = 4.8 * len(p.name) * x_per_pt
        shift = 0
        while any(lx < px + pw and px < lx + width and abs(ly - py) < 10 * y_per_pt for px, py, pw in placed):
            ly -= 11 * y_per_pt
            shift += 11
        placed.append((lx, ly, width))
        ax.annotate(p.name, (p.intensity, p.tflops), xytext=(6, 4 - shift), textcoords="offset points", fontsize=8)
    above = [p.name for p in points if p.fraction_of_roof(ceilings) > 1.05]
    if above and ceilings.measured:
        ax.text(0.01, 0.99, ABOVE_ROOF_NOTE.format(names="; ".join(above)), transform=ax.transAxes, fontsize=8,
                va="top", ha="left", wrap=True, bbox=dict(boxstyle="round", fc="lightyellow", alpha=0.9))  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


# Written on the plot when a measured point beats a measured roof. No kernel beats the memory
# it reads: either its inputs were small enough to stay in the caches, which are faster than
# the memory the roof was measured on (a copy larger than the caches), or the roof was
# measured at a busy moment (other programs, clock changes) and is too low.
ABOVE_ROOF_NOTE = (
    "Above the measured roof: {names}.\nEither their inputs stayed in the caches, faster than the\n"
    "memory the roof was measured on, or the roofs were measured\nat a busy moment: measure both again."
)

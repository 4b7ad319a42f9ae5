"""Benchmark attention (stage 2): ``llm-course bench attention``.

Three measurements in one run:

1. **Speed** -- forward and backward TFLOP/s of the course's FlashAttention
   kernels ("triton") against PyTorch's ``F.scaled_dot_product_attention`` with
   its default backend ("sdpa": cuDNN on Hopper) and with its FlashAttention-2
   backend forced ("sdpa_flash"), at head dims 64 and 128, sequence lengths 1k,
   4k and 16k, causal and not, in bf16. Each size keeps 16k tokens in a batch
   (B = 16384 / T) and a model width of 2048 (H = 2048 / D), enough to fill a
   GPU. FLOPs come from ``llm_course.measure.flops``: 4 B H T S D for the
   forward, halved for causal; the backward counts 2.5 times the forward.
2. **Memory** -- the peak memory of a forward and backward at growing T (B = 1,
   H = 16, D = 128, causal): the fused kernels, PyTorch's fused attention, and
   the naive reference (``llm_course/backends/torch_ops/attention.py``), which
   stores (T, T) matrices and is skipped, with a note, where it would not fit.
3. **RoPE** -- the bandwidth of the fused RoPE kernel against the copy
   bandwidth measured in the same run (RoPE moves bytes and does almost no math).

    llm-course bench attention                   # everything (an H100: about 4 minutes)
    llm-course bench attention --quick           # tiny sizes: a smoke test (CPU: the interpreter)
    llm-course bench attention --targets         # also the pass/fail of stage 2's targets
    llm-course bench attention --redraw --out DIR

Files in ``--out`` (default ``bench_out/<device>/``): ``attention.csv`` (speed and
RoPE rows, failures included with their error), ``attention_memory.csv``,
``attention_meta.json`` (GPU, versions, date, ceilings, the block sizes the autotuner
chose), ``attention_tflops.png`` and ``attention_memory.png``. Times are medians of device times with the L2 cache
flushed before each call (``llm_course.bench.common.measure``).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from llm_course.bench.common import (
    DTYPES,
    BenchRow,
    bench_parser,
    device_name,
    format_table,
    free_memory,
    measure,
    metadata,
    output_dir,
    read_csv,
    read_meta,
    write_csv,
    write_meta,
)
from llm_course.device import get_device, is_gpu
from llm_course.measure import flops as FL
from llm_course.measure.roofline import Ceilings, measure_ceilings

IMPLS = ("triton", "sdpa", "sdpa_flash")
CSV_NAME, MEM_CSV_NAME, META_NAME = "attention.csv", "attention_memory.csv", "attention_meta.json"
TFLOPS_PNG, MEMORY_PNG = "attention_tflops.png", "attention_memory.png"


@dataclass
class Sizes:
    """What one run measures; ``TOKENS`` = B * T and ``WIDTH`` = H * D are kept fixed."""

    head_dims: tuple[int, ...]
    seq_lens: tuple[int, ...]
    tokens: int
    width: int
    mem_seq_lens: tuple[int, ...]
    mem_heads: int
    mem_head_dim: int
    rope_shape: tuple[int, int, int, int]  # (B, H, T, D)
    warmup: int
    reps: int


SIZES = {
    "gpu": Sizes((64, 128), (1024, 4096, 16384), 16384, 2048, (1024, 2048, 4096, 8192, 16384, 32768, 65536),
                 16, 128, (8, 32, 4096, 128), 5, 20),
    "cpu": Sizes((16, 32), (32, 64), 64, 64, (32, 64, 128), 2, 16, (1, 4, 64, 32), 1, 3),
    "quick": Sizes((16,), (32, 64), 64, 32, (32, 64), 2, 16, (1, 2, 32, 16), 1, 2),
}  # fmt: skip


@dataclass
class MemoryRow:
    """Peak memory of one forward + backward, beyond the inputs: one implementation at one T."""

    impl: str
    T: int
    B: int
    H: int
    D: int
    peak_mib: float = math.nan  # measured: torch.cuda.max_memory_allocated() minus what was there before
    scores_mib: float = math.nan  # one bf16 (T, T) matrix per head: what naive attention must store, at least
    note: str = ""  # why there is no measurement


# --- the implementations ---------------------------------------------------------------------


def implementations(device: torch.device) -> dict[str, Callable]:
    """name -> ``fn(q, k, v, causal)``; the same (B, H, T, D) tensors for all."""
    from llm_course.backends.triton_ops.flash_attention import attention as triton_attention

    def sdpa(q, k, v, causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def sdpa_flash(q, k, v, causal):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if not is_gpu(device):
            raise RuntimeError("PyTorch's FlashAttention backend needs a CUDA GPU")
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return {"triton": lambda q, k, v, causal: triton_attention(q, k, v, causal=causal), "sdpa": sdpa, "sdpa_flash": sdpa_flash}


def _qkv(B, H, T, D, dtype, device, grad):
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(B, H, T, D, generator=g, device=device).to(dtype).requires_grad_(grad) for _ in range(4)]


def op_name(direction: str, D: int, causal: bool) -> str:
    """'fwd d128 causal', 'bwd d64 full', ...: one chart panel each."""
    return f"{direction} d{D} {'causal' if causal else 'full'}"


# --- 1. speed -----------------------------------------------------------------------------------


def run_speed(sizes: Sizes, dtype_name: str, device: torch.device, ceilings: Ceilings, show: bool = True) -> list[BenchRow]:
    dtype = DTYPES[dtype_name]
    impls = implementations(device)
    rows: list[BenchRow] = []
    for D in sizes.head_dims:
        for T in sizes.seq_lens:
            B, H = max(1, sizes.tokens // T), max(1, sizes.width // D)
            for causal in (False, True):
                fwd_flops = FL.attention_flops(B, H, T, T, D, causal)
                bwd_flops = FL.attention_backward_flops(B, H, T, T, D, causal)
                nbytes = FL.attention_bytes(B, H, T, T, D, FL.dtype_bytes(dtype))
                try:
                    q, k, v, do = _qkv(B, H, T, D, dtype, device, grad=True)
                    err = ""
                except Exception as exc:  # out of memory, say: recorded for every implementation
                    err = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                for name, fn in impls.items():
                    fwd = BenchRow(op_name("fwd", D, causal), name, dtype_name, f"T={T}", float(T), "TFLOP/s", fwd_flops, nbytes)
                    bwd = BenchRow(op_name("bwd", D, causal), name, dtype_name, f"T={T}", float(T), "TFLOP/s", bwd_flops, 2 * nbytes)
                    if err:
                        fwd.error = bwd.error = err
                    else:
                        with torch.no_grad():
                            measure(fwd, lambda: fn(q, k, v, causal), warmup=sizes.warmup, reps=sizes.reps, device=device, ceilings=ceilings)
                        try:
                            o = fn(q, k, v, causal)  # one forward; the backward is timed alone
                            step = lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)  # noqa: E731
                        except Exception as exc:
                            bwd.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                        else:
                            measure(bwd, step, warmup=sizes.warmup, reps=sizes.reps, device=device, ceilings=ceilings)
                        o = step = None
                    rows += [fwd, bwd]
                    if show:
                        print("\n".join(format_table([fwd, bwd]).splitlines()[2:]), flush=True)
                q = k = v = do = None
                free_memory()
    _fill_vs_sdpa(rows)
    return rows


def autotune_choices() -> dict[str, list[str]]:
    """The block sizes the autotuner chose for each FlashAttention kernel, one line per tuning key.

    ``{"_flash_fwd_kernel": ["T_BUCKET=1024, ..., HEAD_DIM=128, ... -> BLOCK_M=128, BLOCK_N=64, num_warps=4,
    num_stages=2", ...], ...}``: which tile won is part of a result (a run whose autotuning was
    thrown off by noise shows here).
    """
    from llm_course.backends.triton_ops import flash_attention, flash_attention_bwd

    out = {}
    kernels = (flash_attention._flash_fwd_kernel, flash_attention_bwd._bwd_dkdv_kernel, flash_attention_bwd._bwd_dq_kernel)
    for kernel in kernels:
        lines = []
        for key, cfg in getattr(kernel, "cache", {}).items():
            tuned_on = ", ".join(f"{name}={value}" for name, value in zip(getattr(kernel, "keys", ()), key))
            tile = ", ".join(f"{name}={value}" for name, value in cfg.kwargs.items())
            lines.append(f"{tuned_on} -> {tile}, num_warps={cfg.num_warps}, num_stages={cfg.num_stages}")
        out[kernel.fn.__name__] = lines
    return out


def _fill_vs_sdpa(rows: list[BenchRow]) -> None:
    """``vs_torch`` here is speed relative to PyTorch's default fused attention ("sdpa")."""
    base = {(r.op, r.size): r.ms for r in rows if r.impl == "sdpa" and r.ok}
    for r in rows:
        b = base.get((r.op, r.size))
        r.vs_torch = b / r.ms if b is not None and r.ok else math.nan


# --- 2. memory ----------------------------------------------------------------------------------


def run_memory(sizes: Sizes, dtype_name: str, device: torch.device, show: bool = True) -> list[MemoryRow]:
    """Peak memory of forward + backward beyond the inputs (GPU only: the CPU has no peak counter)."""
    from llm_course.backends.torch_ops.attention import attention as naive_attention

    dtype = DTYPES[dtype_name]
    impls = dict(implementations(device))
    impls.pop("sdpa_flash")
    impls["naive"] = lambda q, k, v, causal: naive_attention(q, k, v, causal=causal)
    B, H, D = 1, sizes.mem_heads, sizes.mem_head_dim
    rows = []
    for T in sizes.mem_seq_lens:
        scores_mib = B * H * T * T * 2 / 2**20
        for name, fn in impls.items():
            row = MemoryRow(name, T, B, H, D, scores_mib=scores_mib)
            rows.append(row)
            if not is_gpu(device):
                row.note = "peak memory is measured on a GPU only"
                continue
            free_memory()
            free = torch.cuda.mem_get_info(device)[0]
            if name == "naive" and 6 * B * H * T * T * 4 > 0.8 * free:  # fp32 scores, probabilities and their grads
                row.note = f"skipped: would need about {6 * B * H * T * T * 4 / 2**30:.0f} GiB for its (T, T) matrices"
                continue
            try:
                q, k, v, do = _qkv(B, H, T, D, dtype, device, grad=True)
                torch.autograd.grad(fn(q, k, v, True), (q, k, v), do)  # compile and tune outside the measurement
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                torch.autograd.grad(fn(q, k, v, True), (q, k, v), do)
                torch.cuda.synchronize(device)
                row.peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            except Exception as exc:  # out of memory, say: noted, and the run goes on
                row.note = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
            q = k = v = do = None
            free_memory()
        if show:
            line = "  ".join(f"{r.impl} {r.peak_mib:,.0f} MiB" if math.isfinite(r.peak_mib) else f"{r.impl} -"
                             for r in rows if r.T == T)  # fmt: skip
            print(f"memory T={T:<6} {line}   (one bf16 T x T matrix per head: {scores_mib:,.0f} MiB)", flush=True)
    return rows


def write_memory_csv(rows: list[MemoryRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(MemoryRow)])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()})
    return path


def read_memory_csv(path: Path) -> list[MemoryRow]:
    types = {fl.name: str(fl.type) for fl in dataclasses.fields(MemoryRow)}  # "int", "float", "str"
    conv = {"int": int, "float": float, "str": str}

    def value(k, v):
        if v == "":
            return "" if types[k] == "str" else math.nan
        return conv[types[k]](v)

    with path.open(newline="") as f:
        return [MemoryRow(**{k: value(k, v) for k, v in rec.items() if k in types}) for rec in csv.DictReader(f)]


# --- 3. RoPE --------------------------------------------------------------------------------------


def run_rope(sizes: Sizes, dtype_name: str, device: torch.device, ceilings: Ceilings, show: bool = True) -> list[BenchRow]:
    """GB/s of the fused RoPE kernel and of the PyTorch reference, as fractions of the copy bandwidth."""
    dtype = DTYPES[dtype_name]
    B, H, T, D = sizes.rope_shape
    n = B * H * T * D
    nbytes = 2 * n * FL.dtype_bytes(dtype) + 2 * T * D * 4  # read x, write the output; cos and sin (fp32 tables)
    size = f"{B}x{H}x{T}x{D}"
    rows = []
    try:
        from llm_course.backends.triton_ops.rope import apply_rope as triton_rope
    except ImportError as exc:
        triton_rope, missing = None, f"the RoPE kernel is not available ({exc})"
    from llm_course.backends.torch_ops.rope import apply_rope as torch_rope

    x = torch.randn(B, H, T, D, device=device).to(dtype)
    angles = torch.arange(T, device=device)[:, None] * torch.rand(D // 2, device=device)[None, :]  # (T, D/2)
    cos, sin = torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)  # (T, D) each
    for name, fn in (("triton", triton_rope), ("torch", torch_rope)):
        row = BenchRow("rope", name, dtype_name, size, float(n), "GB/s", 6.0 * n / 2, nbytes)
        if fn is None:
            row.error = missing
        else:
            measure(row, lambda: fn(x, cos, sin), warmup=sizes.warmup, reps=sizes.reps, device=device, ceilings=ceilings)
        rows.append(row)
    if show:
        print("\n".join(format_table(rows).splitlines()[2:]), flush=True)
    return rows


# --- targets, charts ----------------------------------------------------------------------------


def check_targets(rows: list[BenchRow], ceilings: Ceilings) -> list[tuple[str, str, str]]:
    """(target, PASS/FAIL/n/a, numbers): stage 2's speed targets, for every size measured."""
    def get(op, size, impl):
        return next((r for r in rows if r.op == op and r.size == size and r.impl == impl and r.ok), None)

    out = []
    for r in rows:
        if r.impl != "triton" or not r.op.startswith(("fwd", "bwd")):
            continue
        need = 0.75 if r.op.startswith("fwd") else 0.55
        name = f"{r.op} {r.size}: >= {need:.0%} of sdpa and > sdpa_flash"
        sdpa, flash = get(r.op, r.size, "sdpa"), get(r.op, r.size, "sdpa_flash")
        if not r.ok or sdpa is None or flash is None:
            out.append((name, "n/a", "not measured"))
            continue
        ok = r.tflops >= need * sdpa.tflops and r.tflops > flash.tflops
        out.append((name, "PASS" if ok else "FAIL",
                    f"{r.tflops:.0f} TFLOP/s = {r.tflops / sdpa.tflops:.0%} of sdpa ({sdpa.tflops:.0f}); flash {flash.tflops:.0f}"))  # fmt: skip
    rope = next((r for r in rows if r.op == "rope" and r.impl == "triton"), None)
    name = "rope: >= 85% of the copy bandwidth"
    if rope is None or not rope.ok:
        out.append((name, "n/a", rope.error if rope is not None else "not measured"))
    else:
        frac = rope.gbs / ceilings.bandwidth_gbs
        out.append((name, "PASS" if frac >= 0.85 else "FAIL", f"{rope.gbs:.0f} GB/s = {frac:.0%} of copy ({ceilings.bandwidth_gbs:.0f})"))
    return out


def tflops_chart(rows: list[BenchRow], path: Path, title: str = "") -> Path:
    """One panel per (direction, head dim, causal): TFLOP/s against T, one line per implementation."""
    from matplotlib.figure import Figure  # no pyplot: renders without a display

    rows = [r for r in rows if r.op.startswith(("fwd", "bwd"))]
    ops = sorted(dict.fromkeys(r.op for r in rows), key=lambda o: (o.split()[0] != "fwd", int(o.split()[1][1:]), o.split()[2] == "causal"))
    ncols = min(4, max(1, len(ops)))
    nrows = max(1, math.ceil(len(ops) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[len(ops):]:
        ax.set_visible(False)
    for ax, op in zip(axes, ops):
        for i, impl in enumerate(IMPLS):
            pts = sorted((r.x, r.tflops) for r in rows if r.op == op and r.impl == impl and r.ok)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=impl, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("sequence length T", fontsize=8)
        ax.set_ylabel("TFLOP/s", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def memory_chart(rows: list[MemoryRow], path: Path, title: str = "") -> Path:
    """Peak extra memory of forward + backward against T (log-log), with one T x T matrix per head for scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for i, impl in enumerate(dict.fromkeys(r.impl for r in rows)):
        pts = sorted((r.T, r.peak_mib) for r in rows if r.impl == impl and math.isfinite(r.peak_mib))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=impl, ms=4)
    ref = sorted({(r.T, r.scores_mib) for r in rows})
    if ref:
        ax.plot([p[0] for p in ref], [p[1] for p in ref], "--", color="gray", label="one bf16 T x T matrix per head")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("peak memory beyond the inputs (MiB)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "forward + backward, causal", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def draw_charts(out_dir: str | Path) -> list[Path]:
    """Both charts from ``out_dir``'s CSV files and attention_meta.json (no measuring)."""
    out_dir = Path(out_dir)
    meta = read_meta(out_dir / META_NAME)
    label = f"{meta['device']}, {meta.get('dtype', '')}"
    paths = [tflops_chart(read_csv(out_dir / CSV_NAME), out_dir / TFLOPS_PNG, title=f"Attention: {label}")]
    if (out_dir / MEM_CSV_NAME).exists():
        mem = read_memory_csv(out_dir / MEM_CSV_NAME)
        if mem:
            B, H, D = mem[0].B, mem[0].H, mem[0].D
            paths.append(memory_chart(mem, out_dir / MEMORY_PNG, title=f"Attention memory, fwd + bwd, causal, B={B} H={H} D={D}: {label}"))
    return paths


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    p = bench_parser("attention", __doc__)
    p.add_argument("--parts", default="speed,memory,rope", help="comma-separated, from: speed, memory, rope")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = get_device()
    out_dir = output_dir(args, device)
    if args.redraw:
        for path in draw_charts(out_dir):
            print(f"wrote {path}")
        return 0
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - {"speed", "memory", "rope"}:
        print(f"unknown parts: {', '.join(sorted(parts - {'speed', 'memory', 'rope'}))}; choose from speed, memory, rope")
        return 2
    dtype = args.dtype or ("bf16" if is_gpu(device) else "fp32")
    mode = "quick" if args.quick else ("gpu" if is_gpu(device) else "cpu")
    sizes = SIZES[mode]

    print(f"Attention benchmark on {device_name(device)} ({dtype}, {mode} sizes)")
    ceilings = measure_ceilings(device, quick=args.quick)
    print(f"ceilings measured now: {ceilings}")
    rows: list[BenchRow] = []
    mem: list[MemoryRow] = []
    if "speed" in parts:
        print("\n(the 'vs torch' column is the speed relative to sdpa)\n" + format_table([]))
        rows += run_speed(sizes, dtype, device, ceilings)
    if "rope" in parts:
        rows += run_rope(sizes, dtype, device, ceilings)
    if "memory" in parts:
        print()
        mem = run_memory(sizes, dtype, device)

    write_csv(rows, out_dir / CSV_NAME)
    write_memory_csv(mem, out_dir / MEM_CSV_NAME)
    chosen = autotune_choices()
    write_meta(metadata(device, ceilings, benchmark="attention", dtype=dtype, mode=mode, parts=sorted(parts), autotuned=chosen),
               out_dir / META_NAME)  # fmt: skip
    paths = draw_charts(out_dir)
    print(f"\nwrote {out_dir / CSV_NAME}, {out_dir / MEM_CSV_NAME}, {out_dir / META_NAME}, " + ", ".join(p.name for p in paths))
    if is_gpu(device) and any(chosen.values()):
        print("\nblock sizes the autotuner chose:")
        for kernel, lines in chosen.items():
            print("\n".join(f"  {kernel}: {line}" for line in lines))
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"{len(failed)} measurement(s) failed or were skipped; their errors are in the CSV's 'error' column")
    for r in mem:
        if r.note and is_gpu(device):
            print(f"memory {r.impl} T={r.T}: {r.note}")
    if args.targets:
        print("\nStage-2 targets:")
        for name, verdict, numbers in check_targets(rows, ceilings):
            print(f"  {verdict:<4}  {name}  ({numbers})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

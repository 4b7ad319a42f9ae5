"""Benchmark the stage-1 kernels against PyTorch: ``llm-course bench kernels``.

For each op and size it times the course's Triton kernel, the PyTorch
reference run eagerly ("torch", the code in ``llm_course/backends/torch_ops/``;
for matmul that is ``torch.matmul``, i.e. cuBLAS), the same reference through
``torch.compile`` and, for RMSNorm, Liger-Kernel's when it is installed. It
reports GB/s for the memory-bound ops (bytes: the minimum of
``llm_course.measure.flops``) and TFLOP/s for matmul, as fractions of the two
ceilings measured in the same run: a device-to-device copy and a large
``torch.matmul``.

    llm-course bench kernels                      # everything, default sizes (GPU: ~4 minutes)
    llm-course bench kernels --ops softmax,matmul --dtype fp16
    llm-course bench kernels --quick              # tiny sizes: a smoke test (CPU: the interpreter)
    llm-course bench kernels --targets            # also a pass/fail summary of stage 1's targets
    llm-course bench kernels --redraw --out DIR   # charts again from DIR/kernels.csv

Files in ``--out`` (default ``bench_out/<device>/``): ``kernels.csv`` (one row
per op, size and implementation, failures included with their error),
``kernels_meta.json`` (GPU, versions, date, ceilings), ``kernels_speed.png`` and
``kernels_roofline.png``.

Times are medians of device times with the L2 cache flushed before each call
(see ``llm_course.bench.common.measure``). Row ops use (rows, 4096) inputs;
matmul is square, (n, n) @ (n, n).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Callable

import torch

from llm_course import ops as course_ops
from llm_course.backends.registry import implementation, use_backend
from llm_course.bench.common import (
    DTYPES,
    BenchRow,
    bench_parser,
    ceilings_from_meta,
    device_name,
    fill_vs_baseline,
    format_table,
    free_memory,
    measure,
    metadata,
    output_dir,
    read_csv,
    read_meta,
    roofline_chart,
    speed_chart,
    write_csv,
    write_meta,
)
from llm_course.device import get_device, is_gpu, is_interpreter
from llm_course.measure import flops as F
from llm_course.measure.peaks import lookup
from llm_course.measure.roofline import Ceilings, measure_ceilings

OPS = ("add", "softmax", "rms_norm", "rms_norm_fwd_bwd", "layer_norm", "layer_norm_fwd_bwd", "matmul")
EPS = 1e-6

# Sizes: (GPU default, CPU default, --quick). Row ops are (rows, COLS); matmul is n^3.
ROWS = {"gpu": [4096, 8192, 16384, 32768], "cpu": [64, 256], "quick": [16, 32]}
COLS = {"gpu": 4096, "cpu": 512, "quick": 128}
MATMUL_N = {"gpu": [1024, 2048, 4096, 8192], "cpu": [64, 128], "quick": [16, 32]}
REPS = {"gpu": (5, 30), "cpu": (1, 3), "quick": (1, 2)}  # (warm-up calls, timed calls)
CSV_NAME, META_NAME = "kernels.csv", "kernels_meta.json"
SPEED_PNG, ROOFLINE_PNG = "kernels_speed.png", "kernels_roofline.png"


# --- what one call of each op costs ---------------------------------------------------------


def cost(op: str, rows: int, cols: int, n: int, nbytes: int) -> tuple[float, float]:
    """(FLOPs, minimum bytes) of one call.

    Forward+backward counts: the forward's bytes plus the backward's minimum (read
    x, dy and the weight; write dx, the weight's gradient and the bias's), and
    roughly twice the forward's FLOPs for the backward.
    """
    rc = rows * cols
    if op == "add":
        return F.elementwise_flops(rc), F.elementwise_bytes(rc, 2, 1, nbytes)
    if op == "softmax":
        return F.softmax_flops(rows, cols), F.softmax_bytes(rows, cols, nbytes)
    if op == "rms_norm":
        return F.rmsnorm_flops(rows, cols), F.rmsnorm_bytes(rows, cols, nbytes)
    if op == "rms_norm_fwd_bwd":
        return 3 * F.rmsnorm_flops(rows, cols), F.rmsnorm_bytes(rows, cols, nbytes) + (3 * rc + 2 * cols) * nbytes
    if op == "layer_norm":
        return F.layernorm_flops(rows, cols), F.layernorm_bytes(rows, cols, nbytes)
    if op == "layer_norm_fwd_bwd":
        return 3 * F.layernorm_flops(rows, cols), F.layernorm_bytes(rows, cols, nbytes) + (3 * rc + 3 * cols) * nbytes
    if op == "matmul":
        return F.matmul_flops(n, n, n), F.matmul_bytes(n, n, n, nbytes)
    raise ValueError(f"unknown op {op!r}")


# --- inputs and the callables to time ---------------------------------------------------------


def make_inputs(op: str, rows: int, cols: int, n: int, dtype: torch.dtype, device: torch.device) -> dict:
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=g, device=device).to(dtype).requires_grad_(grad)

    bwd = op.endswith("_fwd_bwd")
    if op == "add":
        return dict(x=rand(rows, cols), y=rand(rows, cols))
    if op == "softmax":
        return dict(x=rand(rows, cols))
    if op.startswith("rms_norm"):
        d = dict(x=rand(rows, cols, grad=bwd), weight=rand(cols, grad=bwd))
    elif op.startswith("layer_norm"):
        d = dict(x=rand(rows, cols, grad=bwd), weight=rand(cols, grad=bwd), bias=rand(cols, grad=bwd))
    else:  # matmul
        return dict(a=rand(n, n), b=rand(n, n))
    if bwd:
        d["dy"] = rand(rows, cols)
    return d


def _forward(op: str, fn: Callable, inp: dict) -> torch.Tensor:
    base = op.removesuffix("_fwd_bwd")
    if base == "add":
        return fn(inp["x"], inp["y"])
    if base == "softmax":
        return fn(inp["x"])
    if base == "rms_norm":
        return fn(inp["x"], inp["weight"], EPS)
    if base == "layer_norm":
        return fn(inp["x"], inp["weight"], inp["bias"], EPS)
    return fn(inp["a"], inp["b"])


def call_of(op: str, fn: Callable, inp: dict) -> Callable[[], object]:
    """A no-argument callable running ``op`` once (forward and backward for *_fwd_bwd)."""
    if not op.endswith("_fwd_bwd"):
        return lambda: _forward(op, fn, inp)
    leaves = [t for t in inp.values() if t.requires_grad]

    def step():  # autograd.grad returns the gradients without accumulating them into .grad
        return torch.autograd.grad(_forward(op, fn, inp), leaves, inp["dy"])

    return step


def _liger_rms_norm() -> Callable | None:
    """Liger-Kernel's RMSNorm autograd function with the registry's signature, or None."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    def liger(x, weight, eps):
        # offset 0, Llama's casting (as Hugging Face's Qwen2/Llama RMSNorm); in_place=False:
        # Liger's default writes dx over dy, and dy is shared by every implementation timed
        return LigerRMSNormFunction.apply(x, weight, eps, 0.0, "llama", False)

    return liger


def implementations(op: str, compile_: bool, device: torch.device) -> dict[str, Callable]:
    """name -> function with the op's registry signature."""
    base = op.removesuffix("_fwd_bwd")
    if base == "matmul":  # cuBLAS; torch.compile would call the same
        return {"torch": torch.matmul, "triton": implementation(base, "triton")}
    impls: dict[str, Callable] = {"torch": implementation(base, "torch")}  # first: the baseline of vs_torch
    if compile_:
        impls["torch.compile"] = torch.compile(implementation(base, "torch"), dynamic=False)
    if base == "rms_norm" and is_gpu(device):
        liger = _liger_rms_norm()
        if liger is not None:
            impls["liger"] = liger
    impls["triton"] = implementation(base, "triton")
    return impls


# --- the run --------------------------------------------------------------------------------


def run(
    ops: list[str], dtype_name: str, device: torch.device, *, mode: str, compile_: bool, ceilings: Ceilings, show: bool = True
) -> list[BenchRow]:
    dtype = DTYPES[dtype_name]
    nbytes = F.dtype_bytes(dtype)
    warmup, reps = REPS[mode]
    cols = COLS[mode]
    rows_out: list[BenchRow] = []
    if show:
        print(format_table([]))
    for op in ops:
        sizes = [(0, 0, n) for n in MATMUL_N[mode]] if op == "matmul" else [(r, cols, 0) for r in ROWS[mode]]
        impls = implementations(op, compile_, device)
        if op == "rms_norm" and is_gpu(device) and "liger" not in impls and show:
            print("(liger_kernel is not installed: no Liger comparison)")
        for rows, c, n in sizes:
            size = f"{n}^3" if op == "matmul" else f"{rows}x{c}"
            flops, nb = cost(op, rows, c, n, nbytes)
            try:
                inp = make_inputs(op, rows, c, n, dtype, device)
            except Exception as exc:  # out of memory, say: record it for every implementation
                inp, err = None, f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            for name, fn in impls.items():
                row = BenchRow(op, name, dtype_name, size, float(n or rows), "TFLOP/s" if op == "matmul" else "GB/s", flops, nb)
                if inp is None:
                    row.error = err
                elif name == "triton":  # wall time through llm_course.ops, as models call it: checks and dispatch included
                    with use_backend("triton"):
                        wall_fn = call_of(op, getattr(course_ops, op.removesuffix("_fwd_bwd")), inp)
                        measure(row, call_of(op, fn, inp), warmup=warmup, reps=reps, device=device, ceilings=ceilings, wall_fn=wall_fn)
                else:
                    measure(row, call_of(op, fn, inp), warmup=warmup, reps=reps, device=device, ceilings=ceilings)
                rows_out.append(row)
                fill_vs_baseline(rows_out, "torch")
                if show:
                    print(format_table([row]).splitlines()[-1], flush=True)
            del inp
            free_memory()
    return rows_out


# --- stage 1 targets --------------------------------------------------------------------------


def check_targets(rows: list[BenchRow], ceilings: Ceilings) -> list[tuple[str, str, str]]:
    """(target, PASS/FAIL/n/a, numbers) for each of stage 1's targets that applies to these rows."""
    def get(op, size, impl):
        return next((r for r in rows if r.op == op and r.size == size and r.impl == impl and r.ok), None)

    out = []
    big = "32768x4096"
    for op in ("softmax", "rms_norm"):
        tri, comp = get(op, big, "triton"), get(op, big, "torch.compile")
        name = f"{op} fwd {big}: >= 90% of copy bandwidth and >= torch.compile"
        if tri is None or comp is None:
            out.append((name, "n/a", "not measured"))
            continue
        ok = tri.gbs >= 0.9 * ceilings.bandwidth_gbs and tri.ms <= comp.ms
        out.append((name, "PASS" if ok else "FAIL", f"{tri.gbs:.0f} GB/s = {100 * tri.frac_bandwidth:.1f}% of copy; torch.compile {comp.gbs:.0f} GB/s"))
    for op in ("rms_norm_fwd_bwd", "layer_norm_fwd_bwd"):
        tri, comp = get(op, big, "triton"), get(op, big, "torch.compile")
        name = f"{op} {big}: >= torch.compile"
        if tri is None or comp is None:
            out.append((name, "n/a", "not measured"))
            continue
        out.append((name, "PASS" if tri.ms <= comp.ms else "FAIL", f"triton {tri.ms:.3f} ms, torch.compile {comp.ms:.3f} ms"))
    for op in ("rms_norm_fwd_bwd", "layer_norm_fwd_bwd"):
        tri = get(op, big, "triton")
        name = f"{op} {big}: wall time per call through llm_course.ops within 15% of the kernels' GPU time"
        if tri is None or not math.isfinite(tri.wall_ms):
            out.append((name, "n/a", "not measured"))
            continue
        ok = tri.wall_ms <= 1.15 * tri.ms
        out.append((name, "PASS" if ok else "FAIL", f"wall {tri.wall_ms:.3f} ms, GPU {tri.ms:.3f} ms (+{100 * (tri.wall_ms / tri.ms - 1):.0f}%)"))
    for n in (2048, 4096, 8192):
        tri, cublas = get("matmul", f"{n}^3", "triton"), get("matmul", f"{n}^3", "torch")
        name = f"matmul {n}^3: >= 90% of cuBLAS"
        if tri is None or cublas is None:
            out.append((name, "n/a", "not measured"))
            continue
        frac = tri.tflops / cublas.tflops
        out.append((name, "PASS" if frac >= 0.9 else "FAIL", f"{tri.tflops:.0f} vs {cublas.tflops:.0f} TFLOP/s = {100 * frac:.1f}%"))
    return out


# --- charts from the files ----------------------------------------------------------------------


def draw_charts(out_dir: str | Path) -> list[Path]:
    """Draw both charts from ``out_dir``'s CSV and kernels_meta.json (no measuring)."""
    out_dir = Path(out_dir)
    rows = read_csv(out_dir / CSV_NAME)
    meta = read_meta(out_dir / META_NAME)
    ceilings = ceilings_from_meta(meta)
    label = f"{meta['device']}, {', '.join(sorted({r.dtype for r in rows}))}"
    paths = [speed_chart(rows, out_dir / SPEED_PNG, ceilings=ceilings, title=f"Stage-1 kernels: {label}")]
    if ceilings is not None:
        paths.append(roofline_chart(rows, out_dir / ROOFLINE_PNG, ceilings, datasheet=lookup(meta["device"]),
                                    title=f"Stage-1 Triton kernels on the roofline: {label}"))  # fmt: skip
    return paths


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    p = bench_parser("kernels", __doc__)
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from: {', '.join(OPS)}")
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = get_device()
    out_dir = output_dir(args, device)
    if args.redraw:
        for path in draw_charts(out_dir):
            print(f"wrote {path}")
        return 0
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        print(f"unknown ops: {', '.join(unknown)}; choose from {', '.join(OPS)}")
        return 2
    dtype = args.dtype or ("bf16" if is_gpu(device) else "fp32")
    mode = "quick" if args.quick else ("gpu" if is_gpu(device) else "cpu")

    print(f"Stage-1 kernel benchmark on {device_name(device)} ({dtype}, {mode} sizes)")
    ceilings = measure_ceilings(device, quick=args.quick)
    print(f"ceilings measured now: {ceilings}")
    compile_ = not args.no_compile
    if compile_ and is_interpreter():  # torch.compile's Triton code cannot run beside the interpreter's
        print("(Triton runs in its interpreter here: no torch.compile comparison)")
        compile_ = False
    rows = run(ops, dtype, device, mode=mode, compile_=compile_, ceilings=ceilings)

    write_csv(rows, out_dir / CSV_NAME)
    write_meta(metadata(device, ceilings, benchmark="kernels", dtype=dtype, mode=mode, ops=ops), out_dir / META_NAME)
    paths = draw_charts(out_dir)
    print(f"\nwrote {out_dir / CSV_NAME}, {out_dir / META_NAME}, " + ", ".join(p.name for p in paths))
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"{len(failed)} measurement(s) failed; their errors are in the CSV's 'error' column")
    if args.targets:
        print("\nStage-1 targets:")
        for name, verdict, numbers in check_targets(rows, ceilings):
            print(f"  {verdict:<4}  {name}  ({numbers})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

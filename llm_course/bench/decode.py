"""Benchmark decode attention (stage 3): ``llm-course bench decode``.

One generation step of one attention layer: ONE query per head against S cached
keys and values. Nearly no arithmetic (two multiply-adds per cached number), so
the speed that matters is bandwidth: how fast the K and V cache is read. Each
row reports the effective GB/s, the bytes that must be read (K and V of the Hkv
kv heads, the queries, the output) divided by the time, and its fraction of the
copy bandwidth measured in the same run: the ceiling.

Implementations (the same bf16 inputs, q (B, Hq, 1, D), k and v (B, Hkv, S, D)):

* ``triton``        -- the course's flash-decoding kernels (``ops.decode_attention``, Triton
  backend), on a cache of exactly S slots, all filled;
* ``triton_static`` -- the same kernels on a cache of the largest S of the sweep with S
  slots filled: what a model with a preallocated cache runs (the splits past the
  filled slots must cost nothing);
* ``sdpa``          -- ``F.scaled_dot_product_attention(q, k, v, enable_gqa=True)``, PyTorch's
  default backend, reading the Hkv heads directly;
* ``sdpa_expand``   -- the same on k and v expanded to Hq heads beforehand (outside the
  timing; ``repeat_interleave``, as many models do): it must read G = Hq / Hkv times more.

The sweep: S from 1k to 32k, batch 1 and 16, the heads of Qwen2-0.5B (Hq 14, Hkv 2)
and Qwen2-1.5B/7B-like (Hq 28, Hkv 4), head dims 64 and 128.

    llm-course bench decode                  # everything (a GPU: about two minutes)
    llm-course bench decode --quick          # tiny sizes: a smoke test (CPU: the interpreter)
    llm-course bench decode --targets        # also: is triton at least as fast as sdpa from S = 4k on?
    llm-course bench decode --redraw --out DIR

Files in ``--out`` (default ``bench_out/<device>/``): ``decode.csv`` (one row per
measurement, failures with their error), ``decode_meta.json`` (GPU, versions, date,
ceilings) and ``decode_gbs.png`` (GB/s against S, one panel per shape). Times are
medians of device times with the L2 cache flushed before each call
(``llm_course.bench.common.measure``); ``wall ms`` is the time per call of a loop of
calls through ``llm_course.ops`` (host work included), GPU only.
"""

from __future__ import annotations

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
    fill_vs_baseline,
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

IMPLS = ("triton", "triton_static", "sdpa", "sdpa_expand")
CSV_NAME, META_NAME, GBS_PNG = "decode.csv", "decode_meta.json", "decode_gbs.png"


@dataclass
class Sizes:
    seq_lens: tuple[int, ...]
    batches: tuple[int, ...]
    heads: tuple[tuple[int, int], ...]  # (Hq, Hkv)
    head_dims: tuple[int, ...]
    warmup: int
    reps: int


SIZES = {
    "gpu": Sizes((1024, 2048, 4096, 8192, 16384, 32768), (1, 16), ((14, 2), (28, 4)), (64, 128), 5, 30),
    "cpu": Sizes((32, 64, 128), (1, 2), ((4, 2),), (16, 32), 1, 3),
    "quick": Sizes((32, 48), (1,), ((4, 2),), (16,), 1, 1),
}


def op_name(D: int, Hq: int, Hkv: int, B: int) -> str:
    """'d128 28/4 B16': one chart panel per head dim, heads and batch."""
    return f"d{D} {Hq}/{Hkv} B{B}"


def decode_bytes(B: int, Hq: int, Hkv: int, S: int, D: int, dtype: torch.dtype) -> float:
    """The bytes one step must move at least: K and V of the kv heads, q, and the output."""
    return float((2 * B * Hkv * S * D + 2 * B * Hq * D) * FL.dtype_bytes(dtype))


def decode_flops(B: int, Hq: int, S: int, D: int) -> float:
    """q . k and p @ v: 2 multiply-adds per query head, cached slot and feature."""
    return 4.0 * B * Hq * S * D


def implementations(device: torch.device) -> dict[str, Callable]:
    """name -> ``fn(q, k, v, lengths)`` on the caches prepared for it (see :func:`_inputs`)."""
    from llm_course.backends.triton_ops.decode_attention import decode_attention_forward

    def triton(q, k, v, lengths):
        return decode_attention_forward(q, k, v, lengths)

    def sdpa(q, k, v, lengths):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[1] != q.shape[1])

    return {"triton": triton, "triton_static": triton, "sdpa": sdpa, "sdpa_expand": sdpa}


def _inputs(impl: str, q, k, v, k_big, v_big, lengths):
    """The caches each implementation reads."""
    if impl == "triton_static":
        return q, k_big, v_big, lengths
    if impl == "sdpa_expand":
        G = q.shape[1] // k.shape[1]
        return q, k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1), lengths
    return q, k, v, lengths


def run_decode(sizes: Sizes, dtype_name: str, device: torch.device, ceilings: Ceilings, show: bool = True) -> list[BenchRow]:
    from llm_course import ops
    from llm_course.backends import use_backend

    dtype = DTYPES[dtype_name]
    impls = implementations(device)
    S_max = max(sizes.seq_lens)
    rows: list[BenchRow] = []
    g = torch.Generator(device=device).manual_seed(0)
    for D in sizes.head_dims:
        for Hq, Hkv in sizes.heads:
            for B in sizes.batches:
                try:  # one static cache per shape, its slots past S never read
                    k_big, v_big = (torch.randn(B, Hkv, S_max, D, generator=g, device=device).to(dtype) for _ in range(2))
                    err = ""
                except Exception as exc:  # out of memory, say: recorded for every row of this shape
                    k_big = v_big = None
                    err = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                for S in sizes.seq_lens:
                    op = op_name(D, Hq, Hkv, B)
                    nbytes = decode_bytes(B, Hq, Hkv, S, D, dtype)
                    shape_rows = []
                    for impl, fn in impls.items():
                        row = BenchRow(op, impl, dtype_name, f"S={S}", float(S), "GB/s", decode_flops(B, Hq, S, D), nbytes)
                        shape_rows.append(row)
                        if err:
                            row.error = err
                            continue
                        try:
                            q = torch.randn(B, Hq, 1, D, generator=g, device=device).to(dtype)
                            k, v = k_big[:, :, :S].contiguous(), v_big[:, :, :S].contiguous()
                            lengths = torch.full((B,), S, dtype=torch.int32, device=device)
                            args = _inputs(impl, q, k, v, k_big, v_big, lengths)
                        except Exception as exc:
                            row.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                            continue

                        def through_ops(args=args):
                            with use_backend("triton"):
                                return ops.decode_attention(*args)

                        wall = through_ops if impl.startswith("triton") else None
                        with torch.no_grad():
                            measure(row, lambda args=args, fn=fn: fn(*args), warmup=sizes.warmup, reps=sizes.reps,
                                    device=device, ceilings=ceilings, wall_fn=wall)  # fmt: skip
                        args = q = k = v = None
                    fill_vs_baseline(shape_rows, "sdpa")
                    rows += shape_rows
                    if show:
                        print("\n".join(format_table(shape_rows).splitlines()[2:]), flush=True)
                k_big = v_big = None
                free_memory()
    return rows


# --- targets, chart ---------------------------------------------------------------------------------


def check_targets(rows: list[BenchRow]) -> list[tuple[str, str, str]]:
    """(target, PASS/FAIL/n/a, numbers): triton at least as fast as sdpa for every shape with S >= 4096."""
    out = []
    for r in rows:
        if r.impl != "triton" or r.x < 4096:
            continue
        name = f"decode {r.op} {r.size}: triton >= sdpa"
        base = next((s for s in rows if s.op == r.op and s.size == r.size and s.impl == "sdpa" and s.ok), None)
        if not r.ok or base is None:
            out.append((name, "n/a", r.error or "sdpa not measured"))
            continue
        out.append((name, "PASS" if r.ms <= base.ms else "FAIL",
                    f"{r.ms * 1e3:.1f} us vs {base.ms * 1e3:.1f} us ({r.gbs:.0f} vs {base.gbs:.0f} GB/s)"))  # fmt: skip
    return out


def gbs_chart(rows: list[BenchRow], path: Path, ceilings: Ceilings | None = None, title: str = "") -> Path:
    """One panel per (head dim, heads, batch): effective GB/s against S, one line per implementation."""
    from matplotlib.figure import Figure  # no pyplot: renders without a display

    ops = list(dict.fromkeys(r.op for r in rows))
    ncols = min(4, max(1, len(ops)))
    nrows = max(1, math.ceil(len(ops) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[len(ops):]:
        ax.set_visible(False)
    for ax, op in zip(axes, ops):
        for i, impl in enumerate(IMPLS):
            pts = sorted((r.x, r.gbs) for r in rows if r.op == op and r.impl == impl and r.ok)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=impl, ms=4)
        if ceilings is not None:
            ax.axhline(ceilings.bandwidth_gbs, ls="--", color="gray", lw=1, label="measured copy")
        ax.set_xscale("log", base=2)
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("cached keys S", fontsize=8)
        ax.set_ylabel("effective GB/s", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10 if ncols == 1 else 12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def draw_charts(out_dir: str | Path) -> list[Path]:
    """The chart from ``out_dir``'s decode.csv and decode_meta.json (no measuring)."""
    from llm_course.bench.common import ceilings_from_meta

    out_dir = Path(out_dir)
    meta = read_meta(out_dir / META_NAME)
    title = f"Decode attention, one query against S cached keys\n{meta['device']}, {meta.get('dtype', '')}"
    return [gbs_chart(read_csv(out_dir / CSV_NAME), out_dir / GBS_PNG, ceilings_from_meta(meta), title=title)]


# --- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = bench_parser("decode", __doc__).parse_args(argv)
    device = get_device()
    out_dir = output_dir(args, device)
    if args.redraw:
        for path in draw_charts(out_dir):
            print(f"wrote {path}")
        return 0
    dtype = args.dtype or ("bf16" if is_gpu(device) else "fp32")
    mode = "quick" if args.quick else ("gpu" if is_gpu(device) else "cpu")
    sizes = SIZES[mode]

    print(f"Decode attention benchmark on {device_name(device)} ({dtype}, {mode} sizes)")
    ceilings = measure_ceilings(device, quick=args.quick)
    print(f"ceilings measured now: {ceilings}")
    print("\n(speed: effective GB/s, the K and V bytes over the time; 'vs torch' is the speed relative to sdpa)\n" + format_table([]))
    rows = run_decode(sizes, dtype, device, ceilings)

    write_csv(rows, out_dir / CSV_NAME)
    write_meta(metadata(device, ceilings, benchmark="decode", dtype=dtype, mode=mode), out_dir / META_NAME)
    paths = draw_charts(out_dir)
    print(f"\nwrote {out_dir / CSV_NAME}, {out_dir / META_NAME}, " + ", ".join(p.name for p in paths))
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"{len(failed)} measurement(s) failed or were skipped; their errors are in the CSV's 'error' column")
    if args.targets:
        print("\nDecode targets:")
        for name, verdict, numbers in check_targets(rows):
            print(f"  {verdict:<4}  {name}  ({numbers})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

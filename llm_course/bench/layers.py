"""Benchmark whole layers with each backend: ``llm-course bench layers``.

A kernel's speed matters as far as it speeds up the layers a model is made of.
This times three layers of a 2048-wide model, forward and forward + backward,
under the "torch" backend (the PyTorch reference ops) and the "triton" backend
(the course's kernels: linear, RoPE, FlashAttention, GELU and SiLU-times-gate), and
measures their peak memory:

* ``attention``: grouped-query attention with RoPE
  (``llm_course.models.components.attention.GroupedQueryAttention``: 16 query
  heads, 4 kv heads, head dim 128, causal);
* ``swiglu_mlp``: Llama/Qwen2's gated MLP (``components.mlp.GatedMLP``, intermediate 5632);
* ``gpt2_mlp``: GPT-2's MLP (``components.mlp.MLP``, intermediate 4 x 2048, GELU).

    llm-course bench layers                  # B = 4, T = 2048, bf16 on a GPU (about a minute)
    llm-course bench layers --quick          # tiny sizes on the CPU (the interpreter): a smoke test
    llm-course bench layers --seq 4096 --batch 2

Files in ``--out`` (default ``bench_out/<device>/``): ``layers.csv``, ``layers.png``
and ``layers_meta.json``. TFLOP/s count the layer's matmuls and attention
(``llm_course.measure.flops``); a backward costs twice its forward's matmuls
and 2.5 times its attention.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from llm_course.backends import use_backend
from llm_course.bench.common import DTYPES, device_name, free_memory, metadata, output_dir, write_meta
from llm_course.device import get_device, synchronize, is_gpu
from llm_course.measure import flops as FL
from llm_course.measure.timer import benchmark

BACKENDS = ("torch", "triton")
LAYERS = ("attention", "swiglu_mlp", "gpt2_mlp")
CSV_NAME, META_NAME, PNG_NAME = "layers.csv", "layers_meta.json", "layers.png"


@dataclass
class LayerConfig:
    """The model the layers come from: width C, heads, head dim D, MLP widths; and the batch."""

    hidden: int = 2048
    heads: int = 16
    kv_heads: int = 4
    head_dim: int = 128
    intermediate: int = 5632  # SwiGLU's I
    batch: int = 4
    seq: int = 2048
    warmup: int = 3
    reps: int = 10


QUICK = LayerConfig(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, batch=1, seq=32, warmup=0, reps=1)


@dataclass
class LayerRow:
    layer: str
    backend: str
    passes: str  # "fwd" or "fwd+bwd"
    dtype: str
    shape: str  # "B x T x C"
    flops: float
    ms: float = math.nan
    tflops: float = math.nan
    peak_mib: float = math.nan  # beyond parameters and inputs; GPU only
    error: str = ""


# --- the layers and what they cost --------------------------------------------------------------------


def make_layer(name: str, cfg: LayerConfig) -> torch.nn.Module:
    from llm_course.models.components.attention import GroupedQueryAttention
    from llm_course.models.components.mlp import MLP, GatedMLP

    if name == "attention":
        return GroupedQueryAttention(cfg.hidden, cfg.heads, cfg.kv_heads, head_dim=cfg.head_dim, max_position_embeddings=cfg.seq)
    if name == "swiglu_mlp":
        return GatedMLP(cfg.hidden, cfg.intermediate)
    if name == "gpt2_mlp":
        return MLP(cfg.hidden)
    raise ValueError(f"unknown layer {name!r}; choose from {', '.join(LAYERS)}")


def layer_flops(name: str, cfg: LayerConfig, backward: bool) -> float:
    """Matmul and attention FLOPs of one call (the elementwise work is left out)."""
    tokens, C = cfg.batch * cfg.seq, cfg.hidden
    if name == "attention":
        qo = 2 * cfg.heads * cfg.head_dim  # q_proj and o_proj widths
        kv = 2 * cfg.kv_heads * cfg.head_dim
        mm = FL.matmul_flops(tokens, qo + kv, C)
        att = FL.attention_flops(cfg.batch, cfg.heads, cfg.seq, cfg.seq, cfg.head_dim, causal=True)
        return 3 * mm + 3.5 * att if backward else mm + att
    widths = 3 * cfg.intermediate if name == "swiglu_mlp" else 2 * 4 * C
    mm = FL.matmul_flops(tokens, widths, C)
    return 3 * mm if backward else mm


def step_of(layer: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, backend: str, backward: bool) -> Callable[[], object]:
    """One call under ``backend``: the forward, or the forward and the gradients of x and the parameters."""
    leaves = [x, *layer.parameters()]

    def step():
        with use_backend(backend):
            y = layer(x)
            if backward:  # autograd.grad returns the gradients without keeping them in .grad
                return torch.autograd.grad(y, leaves, dy)
            return y

    return step


# --- the run -------------------------------------------------------------------------------------------


def run(cfg: LayerConfig, dtype_name: str, device: torch.device, layers=LAYERS, backends=BACKENDS, show=True) -> list[LayerRow]:
    dtype = DTYPES[dtype_name]
    shape = f"{cfg.batch}x{cfg.seq}x{cfg.hidden}"
    rows = []
    for name in layers:
        torch.manual_seed(0)
        try:
            layer = make_layer(name, cfg).to(device=device, dtype=dtype)
            x = torch.randn(cfg.batch, cfg.seq, cfg.hidden, device=device, dtype=dtype, requires_grad=True)
            dy = torch.randn_like(x)
            err = ""
        except Exception as exc:  # out of memory, say
            err = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        for backend in backends:
            for backward in (False, True):
                row = LayerRow(name, backend, "fwd+bwd" if backward else "fwd", dtype_name, shape, layer_flops(name, cfg, backward))
                rows.append(row)
                if err:
                    row.error = err
                    continue
                try:
                    step = step_of(layer, x, dy, backend, backward)
                    ctx = torch.enable_grad() if backward else torch.no_grad()
                    with ctx:
                        t = benchmark(step, warmup=cfg.warmup, reps=cfg.reps, device=device, flush_cache=is_gpu(device))
                        row.ms = t.median_ms
                        row.tflops = row.flops / (t.median_ms / 1e3) / 1e12
                        if is_gpu(device):
                            synchronize(device)
                            torch.cuda.reset_peak_memory_stats(device)
                            before = torch.cuda.memory_allocated(device)
                            step()
                            synchronize(device)
                            row.peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20
                except Exception as exc:  # one failing layer must not stop the run
                    row.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                if show:
                    print(format_row(row), flush=True)
        layer = x = dy = None
        free_memory()
    return rows


def format_row(r: LayerRow) -> str:
    if r.error:
        return f"{r.layer:<12} {r.passes:<8} {r.backend:<7} failed: {r.error[:80]}"
    mem = f"{r.peak_mib:>10,.0f} MiB" if math.isfinite(r.peak_mib) else f"{'-':>14}"
    return f"{r.layer:<12} {r.passes:<8} {r.backend:<7} {r.ms:>10.3f} ms {r.tflops:>9.3g} TFLOP/s {mem}"


def write_csv(rows: list[LayerRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(LayerRow)])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()})
    return path


def chart(rows: list[LayerRow], path: Path, title: str = "") -> Path:
    """Milliseconds per layer and pass, one bar per backend (and peak memory on a GPU)."""
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys((r.layer, r.passes) for r in rows))
    backends = list(dict.fromkeys(r.backend for r in rows))
    has_mem = any(math.isfinite(r.peak_mib) for r in rows)
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2 if has_mem else 1, squeeze=False)[0]
    width = 0.8 / max(1, len(backends))
    for ax, field, label in zip(axes, ("ms", "peak_mib"), ("ms (median)", "peak memory (MiB)")):
        for i, b in enumerate(backends):
            vals = [next((getattr(r, field) for r in rows if (r.layer, r.passes) == g and r.backend == b), math.nan) for g in groups]
            ax.bar([j + i * width for j in range(len(groups))], vals, width, label=b, color=f"C{i}")
        ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{g[0]}\n{g[1]}" for g in groups], fontsize=7)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --- command line ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="llm-course bench layers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated, from: {', '.join(LAYERS)}")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny layers, one run each (smoke test)")
    p.add_argument("--out", default=None, help="output folder (default bench_out/<device>/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = get_device()
    out_dir = output_dir(args, device)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    if set(layers) - set(LAYERS):
        print(f"unknown layers: {', '.join(sorted(set(layers) - set(LAYERS)))}; choose from {', '.join(LAYERS)}")
        return 2
    cfg = dataclasses.replace(QUICK) if args.quick or not is_gpu(device) else LayerConfig()
    if args.batch:
        cfg.batch = args.batch
    if args.seq:
        cfg.seq = args.seq
    dtype = args.dtype or ("bf16" if is_gpu(device) else "fp32")
    print(f"Layer benchmark on {device_name(device)} ({dtype}): B={cfg.batch} T={cfg.seq} C={cfg.hidden}, "
          f"{cfg.heads} heads / {cfg.kv_heads} kv heads of {cfg.head_dim}")  # fmt: skip
    rows = run(cfg, dtype, device, layers)
    write_csv(rows, out_dir / CSV_NAME)
    write_meta(metadata(device, None, benchmark="layers", dtype=dtype, config=dataclasses.asdict(cfg)), out_dir / META_NAME)
    png = chart(rows, out_dir / PNG_NAME, title=f"Layers, {device_name(device)}, {dtype}, B={cfg.batch} T={cfg.seq}")
    print(f"\nwrote {out_dir / CSV_NAME}, {out_dir / META_NAME}, {png.name}")
    failed = [r for r in rows if r.error]
    if failed:
        print(f"{len(failed)} measurement(s) failed; their errors are in the CSV's 'error' column")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

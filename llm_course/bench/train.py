"""``llm-course bench train``: what one training step costs, by path, against plain PyTorch.

    llm-course bench train                                     # GPT-2 124M, T=1024, bf16, batch 16
    llm-course bench train --batch 16,32 --paths baseline.compile,torch.compile,triton
    llm-course bench train --models gpt2-124m,qwen2-0.5b --batch 8 --steps 10
    llm-course bench train --models zoo --batch 8 --paths baseline.compile,torch.compile,triton.graph

``--models zoo`` is the config zoo that trains on one GPU: GPT-2 124M, the Qwen2-0.5B shape and
the course's own course-lm (the Qwen2-7B shape needs 16 bytes per parameter of training state,
112 GB before any activation, and is left to FSDP over several GPUs). The baseline is GPT-2 only:
for the other families its path is left out, and ``vs_baseline`` stays empty. Each model trains
at ``--seq`` tokens or its own ``block_size`` if that is shorter (course-lm: 512); the table's
``T`` column and the CSV's ``seq`` say which.

One step = forward, loss, backward, ``optimizer.step()`` (fused AdamW) and ``zero_grad``, in
bf16 autocast (weights, grads and optimizer state fp32), on a fixed batch of random tokens.
The paths:

``baseline.compile``
    The yardstick: GPT-2 written plainly (:mod:`llm_course.bench.baseline_gpt2`, nanoGPT's
    layout: SDPA, the full logits and ``F.cross_entropy``) under ``torch.compile``.
``torch`` / ``torch.compile``
    The course's model on the torch backend (every op is its PyTorch reference), eager
    or with the whole loss under ``torch.compile``.
``triton``
    The course's model on the Triton backend: its LayerNorm, GELU, FlashAttention
    forward and backward, and the fused linear + cross-entropy (no (B*T, V) logits).
``triton+cublas``
    The Triton backend with the matrix products (``ops.linear``) on PyTorch's, i.e. cuBLAS:
    the course's kernels for everything but the GEMMs.
``triton.compile`` / ``triton+cublas.compile``
    The Triton backend (with the GEMMs on cuBLAS for the second) under ``torch.compile``:
    each kernel is a custom op the graph calls whole (``triton_ops/custom_ops.py``) and
    inductor fuses the glue around them.
``triton.graph`` / ``triton+cublas.graph``
    The eager Triton step captured once in a CUDA graph and replayed (:func:`cuda_graph_step`):
    the same kernels, without the host's work per op (Python, checks, launches).
``triton+cublas.compile.graph``
    Both: the compiled step (inductor's fused glue around the course's kernels), captured in a
    CUDA graph.

For each: tokens/s and MFU from the **wall** time of back-to-back steps (host work
included: what a user pays), the **GPU** time of one step (the kernels' busy time from
``torch.profiler``; wall minus GPU is time the GPU waited for the host), peak memory
(``torch.cuda.max_memory_allocated`` over the timed steps, optimizer state included; for the
``.graph`` paths from the start, since the capture in the warm-up allocates the graph's memory) and
the loss of the first and last timed step (the paths must agree: the same model shape,
the same initial scale, the same data). MFU = FLOPs per token (``6N + 12LCT``) x tokens/s /
the GPU's dense bf16 peak. Writes ``train.csv``, ``train_meta.json`` and ``train_speed.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import math
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_course.bench.common import free_memory, metadata, output_dir, write_meta
from llm_course.device import get_device, is_gpu, synchronize

ZOO = ("gpt2-124m", "qwen2-0.5b", "course-lm")
PATHS = ("baseline.compile", "torch", "torch.compile", "triton", "triton+cublas", "triton.compile", "triton+cublas.compile",
         "triton.graph", "triton+cublas.graph", "triton+cublas.compile.graph")


@dataclass
class TrainRow:
    model: str
    path: str
    batch: int
    seq: int
    tokens_per_s: float = math.nan  # from the wall time
    wall_ms: float = math.nan  # one step, back to back, host included
    gpu_ms: float = math.nan  # the kernels' busy time of one step
    mfu: float = math.nan  # from the wall time
    peak_gib: float = math.nan
    loss_first: float = math.nan
    loss_last: float = math.nan
    setup_s: float = math.nan  # build + warm-up (compilation, autotuning)
    vs_baseline: float = math.nan  # tokens/s / baseline.compile's at the same model and batch
    error: str = ""


FIELDS = [f.name for f in dataclasses.fields(TrainRow)]


def _course_model(name: str, device):
    from llm_course.models import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_name(name).to(device).train()


def build_step(path: str, name: str, device):
    """(step(x, y) -> loss tensor, model with .flops_per_token): one full training step."""
    from llm_course.generation.cuda_graph import op_backends
    from llm_course.training.config import OptimizerConfig
    from llm_course.training.loss import fused_loss_fn, loss_fn
    from llm_course.training.trainer import make_optimizer

    kind = device.type
    if path == "baseline.compile":
        from llm_course.bench.baseline_gpt2 import PlainGPT2

        cfg = _config(name)
        if cfg.family != "gpt2":
            raise ValueError("the baseline is GPT-2 only")
        torch.manual_seed(0)
        model = PlainGPT2(cfg).to(device).train()
        opt = model.optimizer(fused=kind == "cuda")
        forward = torch.compile(model)

        def step(x, y):
            with torch.autocast(kind, dtype=torch.bfloat16):
                loss = forward(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        flops = _course_model(name, "cpu").flops_per_token  # the same shape, the same count
        return step, flops

    model = _course_model(name, device)
    opt = make_optimizer(model, types.SimpleNamespace(optimizer=OptimizerConfig()), device)
    backend = path.split(".")[0].split("+")[0]
    overrides = {"linear": "torch"} if "+cublas" in path else None
    fn = fused_loss_fn if backend == "triton" else loss_fn
    compute = functools.partial(fn, model)
    if ".compile" in path:
        compute = torch.compile(compute)
    if path.endswith(".graph"):
        return cuda_graph_step(compute, opt, backend, overrides, device), model.flops_per_token

    def step(x, y):
        with op_backends(backend, overrides), torch.autocast(kind, dtype=torch.bfloat16):
            loss = compute(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, model.flops_per_token


def cuda_graph_step(compute, opt, backend: str, overrides, device):
    """step(x, y) for a whole training step (forward, backward, ``optimizer.step()``) captured in a CUDA graph.

    The first call warms up on a side stream (Triton compiles and autotunes its kernels, the
    optimizer creates its state), then records every kernel of one step into a graph; each call
    copies the batch into the graph's input buffers and replays it: one launch for the whole step,
    so the GPU never waits for Python. What it needs from the step, as in PyTorch's "whole network
    capture": no host synchronisation (the ops skip their value checks while a graph is captured),
    an optimizer whose step counters live on the GPU (``capturable``), no autocast weight cache,
    gradients set to None before the capture (the captured backward then writes them, every replay).
    """
    if device.type != "cuda":
        raise RuntimeError(f"bench train: the .graph paths need a CUDA GPU, got device {device}")
    from llm_course.generation.cuda_graph import op_backends

    for group in opt.param_groups:
        group["capturable"] = True  # the step counters stay on the GPU, updated by the graph
    state: dict = {}

    def body(x, y):
        with op_backends(backend, overrides), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = compute(x, y)
        loss.backward()
        opt.step()
        return loss.detach()

    def capture(x, y) -> None:
        sx, sy = x.clone(), y.clone()  # the graph's input buffers
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                body(sx, sy)
                opt.zero_grad(set_to_none=True)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = body(sx, sy)
        state.update(graph=graph, x=sx, y=sy, loss=loss)

    def step(x, y):
        if not state:
            capture(x, y)
        state["x"].copy_(x)
        state["y"].copy_(y)
        state["graph"].replay()
        return state["loss"].clone()  # the graph overwrites its output buffer at the next replay

    return step


def gpu_busy_ms(step, x, y, steps: int = 2) -> float:
    """The kernels' time of one step (ms): device time summed over every kernel, memcpy and memset."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(x, y)
        torch.cuda.synchronize()
    total_us = sum(e.device_time_total for e in prof.events() if e.device_type.name == "CUDA")
    return total_us / 1e3 / steps


def measure(row: TrainRow, device, peak_tflops: float | None, warmup: int, steps: int) -> None:
    graphed = row.path.endswith(".graph")
    if graphed and is_gpu(device):  # the graph's memory is allocated by the capture, during the warm-up
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step, flops_per_token = build_step(row.path, row.model, device)
    g = torch.Generator().manual_seed(0)
    vocab = _config(row.model).vocab_size
    x = torch.randint(0, vocab, (row.batch, row.seq), generator=g).to(device)
    y = torch.randint(0, vocab, (row.batch, row.seq), generator=g).to(device)
    for _ in range(warmup):
        step(x, y)
    synchronize(device)
    row.setup_s = time.perf_counter() - t0
    if is_gpu(device) and not graphed:
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        losses.append(step(x, y))
    synchronize(device)
    row.wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    row.loss_first, row.loss_last = float(losses[0]), float(losses[-1])
    row.tokens_per_s = row.batch * row.seq / (row.wall_ms / 1e3)
    if peak_tflops:
        row.mfu = flops_per_token(row.seq) * row.tokens_per_s / (peak_tflops * 1e12)
    if is_gpu(device):
        row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        row.gpu_ms = gpu_busy_ms(step, x, y)


@functools.lru_cache(maxsize=None)
def _config(name: str):
    """The model config of ``name`` (read once): its vocabulary and family."""
    from llm_course.models.config import load_model_config

    return load_model_config(name)


def format_rows(rows: list[TrainRow]) -> str:
    head = f"{'model':<11} {'path':<17} {'B':>3} {'T':>5} {'tok/s':>10} {'wall ms':>8} {'GPU ms':>8} {'MFU':>6} {'vs base':>7} {'peak GiB':>8} {'loss 1st->last':>15} {'setup s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.error:
            lines.append(f"{r.model:<11} {r.path:<17} {r.batch:>3} {r.seq:>5}  error: {r.error}")
            continue
        vs = f"{r.vs_baseline:>6.2f}x" if math.isfinite(r.vs_baseline) else f"{'-':>7}"  # no baseline in this run
        lines.append(f"{r.model:<11} {r.path:<17} {r.batch:>3} {r.seq:>5} {r.tokens_per_s:>10,.0f} {r.wall_ms:>8.1f} {r.gpu_ms:>8.1f} "
                     f"{r.mfu:>6.1%} {vs} {r.peak_gib:>8.2f} {r.loss_first:>7.3f}->{r.loss_last:<7.3f} {r.setup_s:>7.1f}")  # fmt: skip
    return "\n".join(lines)


def write_csv(rows: list[TrainRow], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(dataclasses.asdict(r))
    return path


def read_csv(path: Path) -> list[TrainRow]:
    floats = {f.name for f in dataclasses.fields(TrainRow) if f.type in ("float", float)}
    ints = {"batch", "seq"}
    with open(path) as f:
        return [TrainRow(**{k: (float(v) if k in floats else int(v) if k in ints else v) for k, v in r.items()})
                for r in csv.DictReader(f)]  # fmt: skip


def chart(rows: list[TrainRow], path: Path, peak_tflops: float | None) -> Path:
    """Tokens/s per path (bars, wall time), one group per (model, batch); MFU written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.model, r.batch) for r in rows})
    paths = [p for p in PATHS if any(r.path == p for r in rows)]
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(groups) * max(1, len(paths)) / 3, 4))
    width = 0.8 / max(1, len(paths))
    for j, p in enumerate(paths):
        for i, g in enumerate(groups):
            r = next((r for r in rows if (r.model, r.batch) == g and r.path == p and not r.error), None)
            if r is None:
                continue
            bar = ax.bar(i + j * width, r.tokens_per_s / 1e3, width, color=f"C{j}", label=p if i == 0 else None)
            if math.isfinite(r.mfu):
                ax.bar_label(bar, labels=[f"{r.mfu:.0%}"], fontsize=7)
    ax.set_xticks([i + width * (len(paths) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{m}\nbatch {b}" for m, b in groups])
    ax.set_ylabel("thousand tokens/s (wall)")
    ax.set_title("training step: forward, backward, AdamW (MFU on the bars)")
    if ax.get_legend_handles_labels()[0]:  # no bars when every path failed
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="llm-course bench train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--models", default="gpt2-124m", help=f"comma-separated model config names, or zoo ({','.join(ZOO)})")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    p.add_argument("--batch", default="16", help="comma-separated sequences per step")
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence (a model's block_size if shorter)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="output folder (default: the benchmark folder of this GPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from llm_course.measure.peaks import device_peak

    args = parse_args(argv)
    device = get_device(args.device)
    unknown = [p for p in args.paths.split(",") if p not in PATHS]
    if unknown:
        raise SystemExit(f"bench train: unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    peak = device_peak(device)
    peak_tflops = peak.tflops("bf16") if peak else None
    out = output_dir(args, device)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[TrainRow] = []
    models = ZOO if args.models == "zoo" else tuple(args.models.split(","))
    for name in models:
        for batch in (int(b) for b in args.batch.split(",")):
            for path in args.paths.split(","):
                if path == "baseline.compile" and _config(name).family != "gpt2":
                    continue  # the plain baseline is a GPT-2: nothing to compare a Qwen2 with
                seq = min(args.seq, _config(name).block_size)  # the model's own context at most
                row = TrainRow(model=name, path=path, batch=batch, seq=seq)
                try:
                    measure(row, device, peak_tflops, args.warmup, args.steps)
                except Exception as e:  # noqa: BLE001 -- a failed path is a row, not the end of the run
                    row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                rows.append(row)
                base = next((r for r in rows if (r.model, r.batch, r.path) == (name, batch, "baseline.compile") and not r.error), None)
                for r in rows:
                    if base and (r.model, r.batch) == (name, batch) and not r.error:
                        r.vs_baseline = r.tokens_per_s / base.tokens_per_s
                print(format_rows([row]).splitlines()[-1], flush=True)
                write_csv(rows, out / "train.csv")  # after every row: a killed run keeps what it measured
                torch._dynamo.reset()
                free_memory()
    print()
    print(format_rows(rows))
    write_meta(metadata(device, None, benchmark="train", seq=args.seq, warmup=args.warmup, steps=args.steps,
                        peak_bf16_tflops=peak_tflops), out / "train_meta.json")  # fmt: skip
    print(f"wrote {write_csv(rows, out / 'train.csv')}, {chart(rows, out / 'train_speed.png', peak_tflops)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

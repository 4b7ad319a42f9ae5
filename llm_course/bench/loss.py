"""Peak memory and time of the loss at a large vocabulary: ``llm-course bench loss``.

The last layer of a language model and its loss, forward and backward, three ways:

* ``naive``   -- ``logits = hidden @ W.T`` then the torch reference cross-entropy:
  the (N, V) logits, their float32 copy and their gradient all live at once;
* ``triton_ce`` -- the same logits, the Triton cross-entropy kernel (no float32 copy:
  it reads the logits in blocks and writes their gradient once);
* ``fused``   -- ``ops.fused_linear_cross_entropy`` on the Triton backend: chunks of
  rows, the gradients computed in the forward, the logits never whole.

At Qwen2's vocabulary (V = 151,936, C = 896) and N = 16,384 tokens the logits alone
are 5 GB in bfloat16. Each row of ``loss.csv`` gives the peak memory above the inputs
(``torch.cuda.max_memory_allocated``; not measured on the CPU), the median time of one
forward + backward, and how far the loss is from the naive one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields

import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.bench.common import DTYPES, bench_parser, device_name, free_memory, metadata, output_dir, write_meta
from llm_course.device import get_device, is_gpu
from llm_course.device import synchronize as device_synchronize
from llm_course.measure.timer import benchmark

CSV_NAME, META_NAME = "loss.csv", "loss_meta.json"
SIZES = {  # (N tokens, C hidden, V vocabulary)
    "gpu": [(4096, 896, 151936), (16384, 896, 151936)],
    "cpu": [(256, 64, 4096)],
    "quick": [(16, 16, 300)],
}
IMPLS = ("naive", "triton_ce", "fused")


@dataclass
class LossRow:
    impl: str
    N: int
    C: int
    V: int
    dtype: str
    logits_mib: float  # what the (N, V) logits alone take in this dtype
    peak_mib: float = math.nan  # peak memory above the inputs, forward + backward (GPU only)
    ms: float = math.nan  # median time of one forward + backward
    loss_diff: float = math.nan  # |loss - naive loss|
    error: str = ""


def _step(impl: str, hidden, weight, targets):
    """One forward + backward of ``impl``; returns the loss."""
    hidden.grad = weight.grad = None
    if impl == "fused":
        with use_backend("triton"):
            loss = ops.fused_linear_cross_entropy(hidden, weight, targets)
    else:
        with use_backend("torch" if impl == "naive" else "triton"):
            loss = ops.cross_entropy(hidden @ weight.T, targets)
    loss.backward()
    return loss.detach()


def run_one(impl: str, N: int, C: int, V: int, dtype: torch.dtype, device, *, reps: int, reference: float | None):
    """(the row, the loss or None when the run failed)."""
    gen = torch.Generator().manual_seed(0)
    value = None
    row = LossRow(impl, N, C, V, str(dtype).removeprefix("torch."), N * V * torch.finfo(dtype).bits / 8 / 2**20)
    try:
        hidden = torch.randn(N, C, generator=gen).to(device, dtype).requires_grad_()
        weight = (torch.randn(V, C, generator=gen) * 0.02).to(device, dtype).requires_grad_()
        targets = torch.randint(0, V, (N,), generator=gen).to(device)
        if is_gpu(device):
            device_synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        loss = _step(impl, hidden, weight, targets)
        if is_gpu(device):
            device_synchronize(device)
            row.peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        value = loss.item()
        row.loss_diff = abs(value - reference) if reference is not None else 0.0
        row.ms = benchmark(lambda: _step(impl, hidden, weight, targets), warmup=1, reps=reps, device=device).median_ms
    except Exception as exc:  # an out-of-memory naive run is a result too
        row.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    free_memory()
    return row, value


def format_rows(rows: list[LossRow]) -> str:
    lines = [f"{'impl':<10} {'N':>6} {'C':>5} {'V':>7} {'dtype':<9} {'logits MiB':>10} {'peak MiB':>9} {'ms':>8} {'|dloss|':>8}"]
    for r in rows:
        tail = f"  {r.error[:60]}" if r.error else ""
        lines.append(f"{r.impl:<10} {r.N:>6} {r.C:>5} {r.V:>7} {r.dtype:<9} {r.logits_mib:>10.1f} {r.peak_mib:>9.1f} "
                     f"{r.ms:>8.2f} {r.loss_diff:>8.1e}{tail}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("loss", __doc__)
    args = parser.parse_args(argv)
    device = get_device()
    out_dir = output_dir(args, device)
    if args.redraw:
        print("the loss benchmark draws no chart; its numbers are in " + str(out_dir / CSV_NAME))
        return 0
    dtype_name = args.dtype or ("bf16" if is_gpu(device) else "fp32")
    mode = "quick" if args.quick else ("gpu" if is_gpu(device) else "cpu")
    reps = 2 if args.quick else 5
    print(f"Loss benchmark on {device_name(device)} ({dtype_name}, {mode} sizes): forward + backward of the last layer and the loss")
    rows = []
    for N, C, V in SIZES[mode]:
        reference = None
        for impl in IMPLS:
            row, value = run_one(impl, N, C, V, DTYPES[dtype_name], device, reps=reps, reference=reference)
            if impl == "naive":
                reference = value
            rows.append(row)
    print(format_rows(rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(LossRow)]
    with (out_dir / CSV_NAME).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    write_meta(metadata(device, None, benchmark="loss", dtype=dtype_name, mode=mode), out_dir / META_NAME)
    print(f"\nwrote {out_dir / CSV_NAME}, {out_dir / META_NAME}")
    if args.targets and is_gpu(device):
        for N, C, V in SIZES[mode]:
            peak = {r.impl: r.peak_mib for r in rows if (r.N, r.C, r.V) == (N, C, V) and not r.error}
            if "fused" in peak and "naive" in peak:
                verdict = "PASS" if peak["fused"] * 3 <= peak["naive"] else "FAIL"
                print(f"  {verdict}  fused peak <= naive / 3 at N={N}: {peak['fused']:.0f} vs {peak['naive']:.0f} MiB "
                      f"({peak['naive'] / max(peak['fused'], 1e-9):.1f}x less)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

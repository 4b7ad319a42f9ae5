"""How much work an op does (FLOPs) and how much memory it must move (bytes).

Divide one by the other and you get the op's **arithmetic intensity**
(FLOP/byte), which says, before running anything, whether the op will be
limited by the GPU's arithmetic or by its memory (see ``roofline.py``).

The conventions, used everywhere in the course:

* **FLOPs** count floating-point operations: one multiply is 1, one add is 1,
  so a multiply-add is 2. ``exp``, a comparison (for a max), ``sqrt`` and a
  division each count as 1 as well -- real hardware spends more on some of
  them, but they are rare next to the matmuls, and a simple rule is easier to
  check.
* **Bytes** are the *minimum* traffic to and from memory: every input is read
  once, every output is written once. A real kernel may move more (a
  non-fused softmax reads its input three times); a perfect kernel moves
  exactly this much. Measured bytes/second are always computed with this
  minimum, so an inefficient kernel shows up as a low bandwidth.
* Sizes are element counts; ``dtype_bytes`` is the size of one element
  (fp32: 4, bf16 and fp16: 2); see :func:`dtype_bytes`.
"""

from __future__ import annotations

import torch

_DTYPE_NAMES = {
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn, "int8": torch.int8, "uint8": torch.uint8,
    "int32": torch.int32, "int64": torch.int64,
}  # fmt: skip


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element: ``dtype_bytes(torch.bfloat16) == 2``, ``dtype_bytes("fp32") == 4``."""
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype name {dtype!r}; use one of {sorted(_DTYPE_NAMES)}")
        dtype = _DTYPE_NAMES[key]
    return torch.empty((), dtype=dtype).element_size()


# --- elementwise ---------------------------------------------------------------------


def elementwise_flops(n: int, flops_per_element: int = 1) -> int:
    """``n`` elements, ``flops_per_element`` each: ``x + y`` is 1 a element, ``a * x + b`` is 2."""
    return n * flops_per_element


def elementwise_bytes(n: int, n_inputs: int, n_outputs: int, dtype_bytes: int) -> int:
    """Each of ``n_inputs`` tensors of ``n`` elements read once, each of ``n_outputs`` written once.

    ``z = x + y``: ``elementwise_bytes(n, 2, 1, 4)`` = 12 bytes an element in fp32.
    """
    return n * (n_inputs + n_outputs) * dtype_bytes


# --- reductions over the last dimension of a (rows, cols) tensor ----------------------


def softmax_flops(rows: int, cols: int) -> int:
    """Softmax of each row of a (rows, cols) tensor: 5 FLOPs an element.

    Per element: 1 comparison for the row max, 1 subtract (``x - max``), 1
    ``exp``, 1 add into the row sum, 1 divide by the sum. So ``5 * rows * cols``.
    """
    return 5 * rows * cols


def softmax_bytes(rows: int, cols: int, dtype_bytes: int) -> int:
    """Read the (rows, cols) input once, write the (rows, cols) output once."""
    return 2 * rows * cols * dtype_bytes


def rmsnorm_flops(rows: int, cols: int) -> int:
    """RMSNorm ``x / sqrt(mean(x**2) + eps) * w`` over rows: 4 FLOPs an element.

    Per element: square, add into the sum, multiply by ``1/rms``, multiply by
    the weight. The per-row mean, ``+ eps`` and ``1/sqrt`` are a few FLOPs a
    *row* and are left out.
    """
    return 4 * rows * cols


def rmsnorm_bytes(rows: int, cols: int, dtype_bytes: int) -> int:
    """Read x (rows, cols) and the weight (cols,) once, write y (rows, cols) once."""
    return (2 * rows * cols + cols) * dtype_bytes


def layernorm_flops(rows: int, cols: int, bias: bool = True) -> int:
    """LayerNorm ``(x - mean) / sqrt(var + eps) * w + b`` over rows: 7 FLOPs an element (6 without bias).

    Per element: add into the sum (mean), subtract the mean, square, add into
    the sum (variance), multiply by ``1/std``, multiply by the weight, add the
    bias. Per-row terms are left out.
    """
    return (7 if bias else 6) * rows * cols


def layernorm_bytes(rows: int, cols: int, dtype_bytes: int, bias: bool = True) -> int:
    """Read x (rows, cols), the weight (cols,) and the bias (cols,) once, write y (rows, cols) once."""
    return (2 * rows * cols + (2 if bias else 1) * cols) * dtype_bytes


# --- matmul ------------------------------------------------------------------------------


def matmul_flops(M: int, N: int, K: int) -> int:
    """``C = A @ B`` with A (M, K), B (K, N): ``2 * M * N * K``.

    Each of the M*N outputs is a sum of K products: K multiplies and K adds.
    """
    return 2 * M * N * K


def matmul_bytes(M: int, N: int, K: int, dtype_bytes: int, out_dtype_bytes: int | None = None) -> int:
    """Read A (M, K) and B (K, N) once, write C (M, N) once.

    ``out_dtype_bytes`` is C's element size when it differs from the inputs'
    (fp32 output of bf16 inputs, say).
    """
    out = dtype_bytes if out_dtype_bytes is None else out_dtype_bytes
    return (M * K + K * N) * dtype_bytes + M * N * out


# --- attention ---------------------------------------------------------------------------


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool = False) -> int:
    """Forward FLOPs of attention ``softmax(Q K^T / sqrt(D)) V``: ``4 * B * H * T * S * D``.

    Q is (B, H, T, D) with T = ``q_len``; K and V are (B, H, S, D) with S = ``kv_len``.
    Per head, two matmuls: the scores ``Q K^T`` (T x D times D x S: ``2*T*S*D``)
    and ``P V`` (T x S times S x D: ``2*T*S*D``). The softmax (about 5 FLOPs a
    score, ``5*T*S``) is left out, as FlashAttention's papers and benchmarks do:
    it is small next to ``4*T*S*D`` when D >= 64.

    ``causal=True`` halves the count: about half of the T x S scores are
    masked and a good kernel skips them. (This is the benchmarks' convention;
    the exact share is a little more than half, and different when T != S.)
    Grouped-query attention does the same FLOPs: ``heads`` is the query heads.
    """
    flops = 4 * batch * heads * q_len * kv_len * head_dim
    return flops // 2 if causal else flops


def attention_backward_flops(
    batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool = False
) -> int:
    """Backward FLOPs, by FlashAttention's convention: 2.5 times the forward.

    The backward does five matmuls of the forward's size (it recomputes the scores
    ``Q K^T``, then dV, dP, dQ, dK) against the forward's two: 5/2 = 2.5.
    """
    return 5 * attention_flops(batch, heads, q_len, kv_len, head_dim, causal) // 2


def attention_bytes(
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    dtype_bytes: int,
    kv_heads: int | None = None,
) -> int:
    """Bytes of a fused (FlashAttention-style) forward: read Q, K, V once, write O once.

    Q and O are (B, H, T, D); K and V are (B, Hkv, S, D) with ``kv_heads`` = Hkv
    (default: ``heads``; fewer for grouped-query attention). The T x S scores
    never go to memory -- that is the point of a fused kernel. (A training
    forward also writes a (B, H, T) float32 log-sum-exp; it is left out.)
    """
    hkv = heads if kv_heads is None else kv_heads
    return (2 * batch * heads * q_len * head_dim + 2 * batch * hkv * kv_len * head_dim) * dtype_bytes


# --- the ratio ---------------------------------------------------------------------------


def arithmetic_intensity(flops: float, nbytes: float) -> float:
    """FLOPs per byte moved. Below the GPU's ridge point an op is memory-bound, above it compute-bound."""
    if nbytes <= 0:
        raise ValueError(f"bytes must be positive, got {nbytes}")
    return flops / nbytes

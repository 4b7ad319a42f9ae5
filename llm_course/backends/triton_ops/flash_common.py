"""What the FlashAttention forward (``flash_attention.py``) and backward (``flash_attention_bwd.py``) share.

* the constants: the op's name in error messages, the head dims the kernels are
  built for, log2(e) for the ``exp2`` trick;
* :func:`check_attention_inputs`, the input check, run once by ``attention`` (the
  entry point) before the forward; the backward reuses inputs already checked;
* :func:`heads_split_empty`, how the outputs (o, and dq, dk, dv) are laid out;
* the block ranges: which key blocks a block of queries visits (:func:`key_range`,
  forward and dQ) and which query blocks a block of keys is seen by
  (:func:`query_range`, dK and dV), each cut into a masked, an unmasked and a
  masked part.

Both kernel files import this module, and the forward's autograd Function imports
the backward's launcher: the imports run one way, with no circle.
"""

from __future__ import annotations

import math

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.triton_ops.checks import check_same_device, check_same_dtype, check_tensor  # noqa: E402
from llm_course.backends.triton_ops.launch import next_power_of_2  # noqa: E402

OP = "flash_attention"
HEAD_DIMS = (16, 32, 64, 128)  # powers of two the kernels are built for
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))


def seq_bucket(n: int) -> int:
    """Autotuning is keyed on sequence lengths rounded up to a power of two (fewer re-tunings)."""
    return next_power_of_2(max(int(n), 16))


def heads_split_empty(B: int, H: int, T: int, D: int, like: torch.Tensor) -> torch.Tensor:
    """An empty (B, H, T, D) tensor stored as (B, T, H, D): the layout of heads split from a projection.

    A model makes q, k, v by viewing a (B, T, H*D) projection as (B, T, H, D) and transposing
    it to (B, H, T, D), and merges the heads of the output back with ``o.transpose(1, 2)
    .reshape(B, T, H*D)``. Stored this way, that merge is a view, not a copy, and so are the
    gradients dq, dk, dv on their way back to the projection. The kernels write through strides.
    """
    return torch.empty((B, T, H, D), device=like.device, dtype=like.dtype).transpose(1, 2)  # (B, H, T, D)


# --- input checks ------------------------------------------------------------------------


def check_attention_inputs(q, k, v, *, scale=None, window=None, key_padding_mask=None, op: str = OP) -> None:
    """Refuse, with a clear error, every input the kernels cannot handle."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t, ndim=4, dtypes=(torch.float32, torch.float16, torch.bfloat16))
    check_same_device(op, q=q, k=k, v=v, key_padding_mask=key_padding_mask)
    check_same_dtype(op, q=q, k=k, v=v)
    B, Hq, T, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Hkv, S, Dk = k.shape
    if Bk != B or Dk != D:
        raise ValueError(
            f"{op}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and head dim "
            "(q is (B, Hq, T, D), k and v are (B, Hkv, S, D))"
        )
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"{op}: the number of kv heads ({Hkv}) must divide the number of query heads ({Hq})")
    if D not in HEAD_DIMS:
        raise ValueError(f"{op}: head dim {D} is not supported; supported head dims: {', '.join(map(str, HEAD_DIMS))}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"{op}: scale must be a positive number or None, got {scale!r}")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"{op}: window must be a positive int or None, got {window!r}")
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (B, S):
            got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"{op}: key_padding_mask must be a bool tensor of shape (B, S) = ({B}, {S}), got {got}")


# --- block ranges ------------------------------------------------------------------------


@triton.jit
def key_range(m0, T, S, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Which key blocks the query rows [m0, m0 + BLOCK_M) must visit, cut into three ranges.

    Returns ``lo <= mid_lo <= mid_hi <= hi``, all multiples of BLOCK_N:
    [lo, mid_lo) and [mid_hi, hi) hold blocks that need a mask (window edge; causal
    diagonal and the ragged end of the keys); [mid_lo, mid_hi) holds blocks every
    row of this query block sees entirely, which run without a mask.
    """
    off = S - T  # causal alignment: query i sees keys j <= i + off
    row_end = tl.minimum(m0 + BLOCK_M, T)  # one past the last real query row
    lo = 0
    hi = S
    full_lo = 0
    full_hi = S
    if CAUSAL:
        hi = tl.minimum(hi, row_end + off)  # the last row sees keys < row_end + off
        full_hi = tl.minimum(hi, m0 + off + 1)  # the first row sees keys < m0 + off + 1
    if HAS_WINDOW:
        lo = tl.maximum(m0 + off - window + 1, 0)  # the first row's oldest key
        full_lo = row_end + off - window  # the last row's oldest key
    # round outwards to whole blocks for [lo, hi), inwards for the unmasked middle
    hi = tl.cdiv(tl.maximum(hi, 0), BLOCK_N) * BLOCK_N
    lo = tl.minimum((lo // BLOCK_N) * BLOCK_N, hi)
    mid_lo = tl.cdiv(tl.maximum(full_lo, 0), BLOCK_N) * BLOCK_N
    mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi)
    mid_hi = (tl.maximum(full_hi, 0) // BLOCK_N) * BLOCK_N
    mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def query_range(n0, T, S, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Which query blocks see the keys [n0, n0 + BLOCK_N), cut into three ranges.

    Returns ``lo <= mid_lo <= mid_hi <= hi``, multiples of BLOCK_M: [lo, mid_lo)
    (the causal diagonal) and [mid_hi, hi) (the window's edge, the ragged end of
    the queries) need a mask; the query blocks of [mid_lo, mid_hi) see every key
    of the block.
    """
    off = S - T  # query i sees key j when j <= i + off (causal), j > i + off - window
    col_end = tl.minimum(n0 + BLOCK_N, S)  # one past the last real key
    lo = 0
    hi = T
    full_lo = 0
    full_hi = T
    if CAUSAL:
        lo = tl.maximum(n0 - off, 0)  # first row that sees the block's first key
        full_lo = col_end - 1 - off  # rows from here on see the block's last key
    if HAS_WINDOW:
        hi = tl.minimum(col_end - 1 - off + window, T)  # rows below this see the block's last key
        full_hi = tl.minimum(hi, n0 - off + window)  # rows below this still see the first key
    hi = tl.cdiv(tl.maximum(hi, 0), BLOCK_M) * BLOCK_M
    lo = tl.minimum((lo // BLOCK_M) * BLOCK_M, hi)
    mid_lo = tl.cdiv(tl.maximum(full_lo, 0), BLOCK_M) * BLOCK_M
    mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi)
    mid_hi = (tl.maximum(full_hi, 0) // BLOCK_M) * BLOCK_M  # whole query blocks only: no ragged end
    mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)
    return lo, mid_lo, mid_hi, hi

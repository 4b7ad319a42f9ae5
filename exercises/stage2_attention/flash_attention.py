"""Stage 2 exercise: FlashAttention, the forward kernel in Triton and the backward block by block.

    o = softmax(q @ k^T * scale + causal mask) @ v          never building the (T, S) matrix

q (B, H, T, D); k, v (B, H, S, D); o (B, H, T, D). With ``causal=True`` query i
sees the keys j <= i + S - T (the queries are the last T of the S positions).

Two exercises:

* ``flash_forward`` -- the body of :func:`flash_forward_kernel`: one program
  computes BLOCK_M query rows of one head with the online softmax over blocks
  of BLOCK_N keys, and writes the output and the log-sum-exp of each row.
* ``flash_backward`` -- :func:`flash_attention_backward`: dq, dk and dv from the
  saved lse, written in PyTorch one (block_m, block_n) tile at a time. The
  backward's difficulty is its mathematics (what to recompute, the delta term),
  not its pointers, which the forward already taught: writing it tile by tile
  in PyTorch shows the algorithm in twenty lines. The course's Triton version
  of exactly these loops is ``llm_course/backends/triton_ops/flash_attention_bwd.py``.

Given here: the launcher :func:`flash_attention_forward`, the
``torch.autograd.Function`` that joins your forward and backward, and
:func:`flash_attention`. This version is simpler than the course's kernel
(``llm_course/backends/triton_ops/flash_attention.py``): no grouped-query heads,
no window, every row sees at least one key. Notebook 02b walks through it.
"""

from __future__ import annotations

import math

from llm_course.device import configure_triton, has_gpu, is_interpreter

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.triton_ops._checks import check_same_device, check_same_dtype, check_tensor  # noqa: E402
from llm_course.grading import require_written  # noqa: E402

OP = "flash_attention (exercise)"


@triton.jit
def flash_forward_kernel(
    Q, K, V, O, LSE,
    T, S, scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Compute rows [m0, m0 + BLOCK_M) of the output of one (batch, head), m0 = BLOCK_M * program_id(0).

    Inputs: pointers to contiguous q (B, H, T, D), k and v (B, H, S, D), the
    output o (B, H, T, D) in q's dtype and lse (B, H, T) in float32. Axis 1 of
    the grid numbers the (batch, head) pairs: ``pid_bh = tl.program_id(1)``, and
    element (t, d) of that head's q is at ``Q + pid_bh * T * D + t * D + d``
    (K and V likewise with S, LSE at ``LSE + pid_bh * T + t``). T and S need not
    be multiples of the block sizes; D = HEAD_DIM is a power of two >= 16.

    Steps:

    1. The query rows ``offs_m`` (BLOCK_M,), key offsets ``offs_n = tl.arange(0, BLOCK_N)``,
       ``offs_d = tl.arange(0, HEAD_DIM)``; load the q tile (BLOCK_M, D), rows masked to < T.
    2. Running statistics in float32: ``m_i`` (BLOCK_M,) = -inf, ``l_i`` = 0, ``acc`` (BLOCK_M, D) = 0.
    3. Loop over key blocks ``start_n = 0, BLOCK_N, ...`` up to S (with ``causal``
       you may stop at the last key the block's last row sees). For each block:
       load k and v tiles (BLOCK_N, D) masked to keys < S; scores
       ``s = tl.dot(q, tl.trans(k)) * scale`` (BLOCK_M, BLOCK_N); set to -inf the
       scores of keys >= S and, if CAUSAL, of keys j > i + S - T; then the online softmax:
       ``m_new = max(m_i, rowmax(s))``, ``p = exp(s - m_new)``,
       ``alpha = exp(m_i - m_new)`` rescales the old ``l_i`` and ``acc``;
       ``l_i = alpha * l_i + rowsum(p)``; ``acc = alpha * acc + p @ v``; ``m_i = m_new``.
    4. ``o = acc / l_i``, cast to o's dtype; ``lse = m_i + log(l_i)`` (natural log,
       float32). Store both, masked to rows < T.

    Hint: ``tl.dot`` needs both operands in one dtype: ``tl.dot(p.to(v.dtype), v)``.
    ``tl.where(keep, s, float("-inf"))`` masks scores; ``tl.max(s, 1)`` and
    ``tl.sum(p, 1)`` reduce a row. Every row sees key 0 here, so m_i is finite after
    the first block. (The course's kernel uses ``tl.exp2`` with log2(e) folded into
    the scale: a little faster, the same numbers.)
    """
    # Your code here (exercise flash_forward)
    raise NotImplementedError("write flash_forward_kernel: load the q tile, loop over key blocks with the online softmax (masking keys past S and, if causal, the future), then store o = acc / l and lse = m + log(l)")


def default_blocks() -> dict:
    """Block sizes for the forward: small in the interpreter (more blocks, faster), GPU-sized otherwise."""
    if is_interpreter() or not has_gpu():
        return dict(block_m=16, block_n=16)
    return dict(block_m=64, block_n=64)


def flash_attention_forward(q, k, v, *, causal=True, scale=None, block_m=None, block_n=None):
    """Run :func:`flash_forward_kernel`. q (B, H, T, D); k, v (B, H, S, D) -> (o (B, H, T, D), lse (B, H, T) float32)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=4)
    check_same_device(OP, q=q, k=k, v=v)
    check_same_dtype(OP, q=q, k=k, v=v)
    B, H, T, D = q.shape
    S = k.shape[2]
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"{OP}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must be (B, H, T, D), (B, H, S, D), (B, H, S, D)")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"{OP}: head dim {D} must be a power of two from 16 to 256")
    if causal and T > S:
        raise ValueError(f"{OP}: causal attention with more queries ({T}) than keys ({S}) leaves rows with no key; not supported here")
    blocks = default_blocks()
    block_m, block_n = block_m or blocks["block_m"], block_n or blocks["block_n"]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    if q.numel() == 0:
        return o, lse
    require_written(flash_forward_kernel)
    grid = (triton.cdiv(T, block_m), B * H)  # one program per block of query rows of one head
    flash_forward_kernel[grid](
        q, k, v, o, lse, T, S, scale,
        CAUSAL=bool(causal), HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n,
        **({} if is_interpreter() else dict(num_warps=4, num_stages=2)),
    )  # fmt: skip
    return o, lse


def flash_attention_backward(q, k, v, o, lse, do, *, causal=True, scale=None, block_m=16, block_n=16):
    """dq, dk, dv of attention, one (block_m, block_n) tile of the score matrix at a time.

    Inputs: q (B, H, T, D); k, v (B, H, S, D); the forward's output o (B, H, T, D)
    and log-sum-exp lse (B, H, T) (natural log, finite); do (B, H, T, D), the gradient
    of o. Returns (dq, dk, dv) shaped and typed like q, k, v. Compute in float32
    (float64 if the inputs are float64). Never build a (T, S) tensor: every
    intermediate is at most a (B, H, block_m, block_n) tile.

    The mathematics, for one tile of rows i and keys j:

    * ``P = exp(scale * q_i k_j^T - lse_i)``: the forward's probabilities,
      recomputed exactly from the saved lse (no max, no normalising: lse did both);
      0 where the causal mask hides key j (j > i + S - T).
    * ``dV_j += P^T dO_i``;  ``dP = dO_i V_j^T``;
    * ``dS = P * (dP - delta_i)`` with ``delta = rowsum(dO * O)`` (B, H, T), computed
      once before the loops: the softmax's correction term;
    * ``dQ_i += scale * dS K_j``;  ``dK_j += scale * dS^T Q_i``.

    Hint: loop over query blocks ``for m0 in range(0, T, block_m)`` and key blocks
    ``for n0 in range(0, S, block_n)``; slices ``q[:, :, m0:m0 + block_m]`` stop at
    T on their own. With ``causal`` a key block that starts after the block's last
    row can be skipped.
    """
    # Your code here (exercise flash_backward)
    raise NotImplementedError("write flash_attention_backward: delta = rowsum(do * o), then loop over (block_m, block_n) tiles recomputing P from lse to accumulate dv, dq and dk")


class FlashAttention(torch.autograd.Function):
    """Your forward kernel and your backward, joined so that autograd can use them."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        o, lse = flash_attention_forward(q, k, v, causal=causal, scale=scale)
        ctx.save_for_backward(q, k, v, o, lse)  # O(T) memory per head: no (T, S) matrix
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal=ctx.causal, scale=ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(q, k, v, causal=True, scale=None):
    """Differentiable attention with your kernels. q (B, H, T, D); k, v (B, H, S, D) -> (B, H, T, D)."""
    return FlashAttention.apply(q, k, v, causal, scale)

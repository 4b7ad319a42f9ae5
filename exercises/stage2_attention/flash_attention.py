"""Stage 2 exercise: FlashAttention, forward and backward, in Triton.

    o = softmax(q @ k^T * scale + causal mask) @ v          never building the (T, S) matrix

q (B, H, T, D); k, v (B, H, S, D); o (B, H, T, D). With ``causal=True`` query i
sees the keys j <= i + S - T (the queries are the last T of the S positions).

Three kernels to write, one graded exercise each:

* ``flash_forward`` -- :func:`flash_forward_kernel`: one program computes
  BLOCK_M query rows of one head with the online softmax over blocks of
  BLOCK_N keys, and writes the output and the log-sum-exp (lse) of each row.
* ``flash_backward_dkdv`` -- :func:`flash_backward_dkdv_kernel`: one program owns
  BLOCK_N keys of one head and walks over the query blocks, recomputing the
  probabilities from the saved lse, to write dK and dV for its keys.
* ``flash_backward_dq`` -- :func:`flash_backward_dq_kernel`: the same
  recomputation with the loops the other way round, like the forward: one
  program owns BLOCK_M queries and walks over the key blocks to write dQ.

The backward's mathematics, for a tile of query rows i and keys j (dO is the
gradient of the output):

    P   = exp(scale * q_i k_j^T - lse_i)     the forward's probabilities, recomputed exactly
    dV_j += P^T dO_i
    dP  = dO_i V_j^T
    dS  = P * (dP - delta_i)                 delta = rowsum(dO * O), (B, H, T): given
    dK_j += scale * dS^T Q_i                 dQ_i += scale * dS K_j

Given here: the launchers (:func:`flash_attention_forward`,
:func:`flash_backward_dkdv`, :func:`flash_backward_dq` and
:func:`flash_attention_backward`, which computes ``delta`` and runs both backward
kernels), the ``torch.autograd.Function`` that joins them, and :func:`attention`,
with the signature of ``llm_course.ops.attention``: the ``exercises`` backend
runs your kernels through it. This version is simpler than the course's
(``llm_course/backends/triton_ops/flash_attention.py`` and ``flash_attention_bwd.py``):
no grouped-query heads inside the kernels, no window, no padding mask,
contiguous inputs, every row sees at least one key. Notebook 02b walks through it.
"""

from __future__ import annotations

import math

from llm_course.device import configure_triton, has_gpu, is_interpreter

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.triton_ops.checks import check_same_device, check_same_dtype, check_tensor  # noqa: E402
from llm_course.grading import NotCovered, require_written  # noqa: E402

OP = "flash_attention (exercise)"


# --- the forward ------------------------------------------------------------------------------


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
    """Block sizes: small in the interpreter (more blocks, faster), GPU-sized otherwise."""
    if is_interpreter() or not has_gpu():
        return dict(block_m=16, block_n=16)
    return dict(block_m=64, block_n=64)


def _launch_options() -> dict:
    return {} if is_interpreter() else dict(num_warps=4, num_stages=2)


def check_inputs(q, k, v, *, causal=True) -> None:
    """Refuse, with a clear error, what these kernels do not handle. q (B, H, T, D); k, v (B, H, S, D)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=4)
    check_same_device(OP, q=q, k=k, v=v)
    check_same_dtype(OP, q=q, k=k, v=v)
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"{OP}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must be (B, H, T, D), (B, H, S, D), (B, H, S, D)")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"{OP}: head dim {D} must be a power of two from 16 to 256")
    if causal and T > k.shape[2]:
        raise ValueError(f"{OP}: causal attention with more queries ({T}) than keys ({k.shape[2]}) leaves rows with no key; not supported here")


def _output(out, like: torch.Tensor, name: str, shape, dtype) -> torch.Tensor:
    """``out`` if given (checked: shape, dtype, device, contiguous), else a new tensor."""
    if out is None:
        return torch.empty(shape, device=like.device, dtype=dtype)
    check_tensor(OP, name, out, dtypes=(dtype,), contiguous=True)
    if tuple(out.shape) != tuple(shape) or out.device != like.device:
        raise ValueError(f"{OP}: {name} must be {tuple(shape)} on {like.device}, got {tuple(out.shape)} on {out.device}")
    return out


def flash_attention_forward(q, k, v, *, causal=True, scale=None, block_m=None, block_n=None, o=None, lse=None):
    """Run :func:`flash_forward_kernel`. q (B, H, T, D); k, v (B, H, S, D) -> (o (B, H, T, D), lse (B, H, T) float32).

    ``o`` and ``lse`` may be given (contiguous, of those shapes) to be written into.
    """
    check_inputs(q, k, v, causal=causal)
    B, H, T, D = q.shape
    S = k.shape[2]
    blocks = default_blocks()
    block_m, block_n = block_m or blocks["block_m"], block_n or blocks["block_n"]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = _output(o, q, "o", q.shape, q.dtype)
    lse = _output(lse, q, "lse", (B, H, T), torch.float32)
    if q.numel() == 0:
        return o, lse
    require_written(flash_forward_kernel)
    grid = (triton.cdiv(T, block_m), B * H)  # one program per block of query rows of one head
    flash_forward_kernel[grid](
        q, k, v, o, lse, T, S, scale,
        CAUSAL=bool(causal), HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, **_launch_options(),
    )  # fmt: skip
    return o, lse


# --- the backward -----------------------------------------------------------------------------


@triton.jit
def flash_backward_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    T, S, scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Write dK and dV of keys [n0, n0 + BLOCK_N) of one (batch, head), n0 = BLOCK_N * program_id(0).

    Inputs: pointers to contiguous q and do (B, H, T, D), k and v (B, H, S, D),
    the forward's lse (B, H, T) float32 (natural log) and delta = rowsum(dO * O)
    (B, H, T) float32; outputs dk, dv (B, H, S, D) in k's dtype. The layout is the
    forward's: ``pid_bh = tl.program_id(1)``; element (t, d) of that head's q is at
    ``Q + pid_bh * T * D + t * D + d`` (DO likewise; K, V, DK, DV with S; LSE and
    DELTA at ``pid_bh * T + t``). T and S need not be multiples of the blocks.

    Steps:

    1. The key positions ``offs_n`` (BLOCK_N,) of this program, ``offs_d``; load
       the k and v tiles (BLOCK_N, D), masked to keys < S: they stay in registers.
       Accumulators ``dk``, ``dv`` (BLOCK_N, D) = 0 in float32.
    2. Loop over query blocks ``start_m = 0, BLOCK_M, ...`` up to T. (With
       ``causal``, query i sees key j when j <= i + S - T, so the blocks of rows
       below n0 - (S - T) see none of these keys and may be skipped: start at
       ``max(n0 - (S - T), 0)`` rounded down to a multiple of BLOCK_M.) For each block:
       load q and do (BLOCK_M, D), lse and delta (BLOCK_M,), masked to rows < T;
       ``s = tl.dot(q, tl.trans(k)) * scale`` (BLOCK_M, BLOCK_N);
       ``p = exp(s - lse[:, None])``, set to 0 outside rows < T, keys < S and (if
       CAUSAL) where j > i + S - T;
       ``dv += tl.dot(tl.trans(p), do)``; ``dp = tl.dot(do, tl.trans(v))``;
       ``ds = p * (dp - delta[:, None])``; ``dk += tl.dot(tl.trans(ds), q)``.
    3. Multiply dk by scale; store dk and dv in k's dtype, masked to keys < S.

    Hint: cast to the inputs' dtype before ``tl.dot`` (``p.to(q.dtype)``,
    ``ds.to(q.dtype)``); keep the accumulators in float32. Zero the masked
    probabilities with ``tl.where(keep, tl.exp(...), 0.0)``. Forgetting delta
    (``ds = p * dp``) leaves dV right and dK wrong: delta is the softmax's
    correction, ``sum_j P_ij dP_ij``, one number per row.
    """
    # Your code here (exercise flash_backward_dkdv)
    raise NotImplementedError("write flash_backward_dkdv_kernel: load this program's k and v tiles, loop over query blocks recomputing p = exp(s - lse), then dv += p^T do, ds = p * (do v^T - delta), dk += ds^T q; store dk * scale and dv")


@triton.jit
def flash_backward_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    T, S, scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Write dQ of query rows [m0, m0 + BLOCK_M) of one (batch, head), m0 = BLOCK_M * program_id(0).

    Inputs and layout as in :func:`flash_backward_dkdv_kernel`; the output dq
    (B, H, T, D) is in q's dtype. The loops are the forward's: this program keeps
    its q, do, lse and delta and walks over the key blocks.

    Steps:

    1. The query rows ``offs_m`` (BLOCK_M,), ``offs_d``; load q and do (BLOCK_M, D),
       lse and delta (BLOCK_M,), masked to rows < T. Accumulator ``dq`` (BLOCK_M, D) = 0, float32.
    2. Loop over key blocks ``start_n = 0, BLOCK_N, ...`` up to S (with ``causal``
       you may stop after the last key the block's last row sees, as in the forward).
       For each block: load k and v (BLOCK_N, D) masked to keys < S;
       ``p = exp(tl.dot(q, tl.trans(k)) * scale - lse[:, None])``, 0 for keys >= S
       and (if CAUSAL) where j > i + S - T; ``dp = tl.dot(do, tl.trans(v))``;
       ``ds = p * (dp - delta[:, None])``; ``dq += tl.dot(ds, k)``.
    3. Multiply dq by scale; store it in q's dtype, masked to rows < T.
    """
    # Your code here (exercise flash_backward_dq)
    raise NotImplementedError("write flash_backward_dq_kernel: load this program's q, do, lse and delta, loop over key blocks recomputing p = exp(s - lse), then ds = p * (do v^T - delta), dq += ds k; store dq * scale")


def _check_backward_inputs(q, k, v, do, lse, delta, causal) -> None:
    check_inputs(q, k, v, causal=causal)
    check_tensor(OP, "do", do, ndim=4, dtypes=(q.dtype,))
    for name, t in (("lse", lse), ("delta", delta)):
        check_tensor(OP, name, t, ndim=3, dtypes=(torch.float32,))
    if do.shape != q.shape or lse.shape != q.shape[:3] or delta.shape != q.shape[:3]:
        raise ValueError(f"{OP}: backward shapes disagree: q {tuple(q.shape)}, do {tuple(do.shape)}, "
                         f"lse {tuple(lse.shape)}, delta {tuple(delta.shape)} (expected q.shape[:3])")  # fmt: skip


def flash_backward_dkdv(q, k, v, do, lse, delta, *, causal=True, scale=None, block_m=None, block_n=None, dk=None, dv=None):
    """Run :func:`flash_backward_dkdv_kernel` -> (dk, dv), shaped and typed like k and v.

    q, do (B, H, T, D); k, v (B, H, S, D); lse, delta (B, H, T) float32. ``dk`` and
    ``dv`` may be given (contiguous) to be written into.
    """
    _check_backward_inputs(q, k, v, do, lse, delta, causal)
    B, H, T, D = q.shape
    S = k.shape[2]
    blocks = default_blocks()
    block_m, block_n = block_m or blocks["block_m"], block_n or blocks["block_n"]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v, do, lse, delta = (t.contiguous() for t in (q, k, v, do, lse, delta))
    dk = _output(dk, k, "dk", k.shape, k.dtype)
    dv = _output(dv, v, "dv", v.shape, v.dtype)
    if k.numel() == 0:
        return dk, dv
    require_written(flash_backward_dkdv_kernel)
    grid = (triton.cdiv(S, block_n), B * H)  # one program per block of keys of one head
    flash_backward_dkdv_kernel[grid](
        q, k, v, do, lse, delta, dk, dv, T, S, scale,
        CAUSAL=bool(causal), HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, **_launch_options(),
    )  # fmt: skip
    return dk, dv


def flash_backward_dq(q, k, v, do, lse, delta, *, causal=True, scale=None, block_m=None, block_n=None, dq=None):
    """Run :func:`flash_backward_dq_kernel` -> dq, shaped and typed like q (``dq`` may be given, contiguous)."""
    _check_backward_inputs(q, k, v, do, lse, delta, causal)
    B, H, T, D = q.shape
    S = k.shape[2]
    blocks = default_blocks()
    block_m, block_n = block_m or blocks["block_m"], block_n or blocks["block_n"]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v, do, lse, delta = (t.contiguous() for t in (q, k, v, do, lse, delta))
    dq = _output(dq, q, "dq", q.shape, q.dtype)
    if q.numel() == 0:
        return dq
    require_written(flash_backward_dq_kernel)
    grid = (triton.cdiv(T, block_m), B * H)  # one program per block of query rows of one head
    flash_backward_dq_kernel[grid](
        q, k, v, do, lse, delta, dq, T, S, scale,
        CAUSAL=bool(causal), HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, **_launch_options(),
    )  # fmt: skip
    return dq


def backward_delta(o, do) -> torch.Tensor:
    """delta = rowsum(dO * O): (B, H, T) float32, the softmax's correction term of the backward."""
    return (do.float() * o.float()).sum(-1)


def flash_attention_backward(q, k, v, o, lse, do, *, causal=True, scale=None, block_m=None, block_n=None):
    """dq, dk, dv of attention from the forward's output ``o`` and ``lse`` (B, H, T) float32, with your two kernels.

    ``do`` is the gradient of ``o``; returns (dq, dk, dv) shaped and typed like q, k, v.
    """
    require_written(flash_backward_dkdv_kernel, flash_backward_dq_kernel)
    delta = backward_delta(o, do)
    blocks = dict(causal=causal, scale=scale, block_m=block_m, block_n=block_n)
    dk, dv = flash_backward_dkdv(q, k, v, do, lse, delta, **blocks)
    dq = flash_backward_dq(q, k, v, do, lse, delta, **blocks)
    return dq, dk, dv


# --- autograd and the op ----------------------------------------------------------------------


class FlashAttention(torch.autograd.Function):
    """Your forward kernel and your backward kernels, joined so that autograd can use them."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        o, lse = flash_attention_forward(q, k, v, causal=causal, scale=scale)
        ctx.save_for_backward(q, k, v, o, lse)  # O(T) memory per head: no (T, S) matrix
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        delta = backward_delta(o, do)
        do = do.contiguous()
        dq = dk = dv = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # only the kernels whose results are needed
            dk, dv = flash_backward_dkdv(q, k, v, do, lse, delta, causal=ctx.causal, scale=ctx.scale)
        if ctx.needs_input_grad[0]:
            dq = flash_backward_dq(q, k, v, do, lse, delta, causal=ctx.causal, scale=ctx.scale)
        return dq, dk, dv, None, None


def attention(q, k, v, *, causal=True, scale=None, window=None, key_padding_mask=None, dropout_p=0.0):
    """``llm_course.ops.attention`` with your kernels: q (B, Hq, T, D); k, v (B, Hkv, S, D) -> (B, Hq, T, D).

    Differentiable. Grouped-query heads (Hkv dividing Hq) are expanded here, before
    the kernels, with ``repeat_interleave`` (autograd sums their gradients back).
    What these kernels do not handle -- a window, a padding mask, dropout, causal
    attention with more queries than keys, other head dims -- raises
    NotImplementedError, and the ``exercises`` backend then runs the course's kernel.
    """
    unsupported = [name for name, given in (("window", window is not None), ("key_padding_mask", key_padding_mask is not None), ("dropout_p", bool(dropout_p))) if given]
    if unsupported:
        raise NotCovered(f"{OP}: {', '.join(unsupported)} is not supported by the exercise's kernels (the course's kernel handles it)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=4)
    Hq, Hkv, T, S, D = q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
    if D < 16 or D > 256 or D & (D - 1):
        raise NotCovered(f"{OP}: head dim {D} is not supported by the exercise's kernels (powers of two from 16 to 256)")
    if causal and T > S:
        raise NotCovered(f"{OP}: causal attention with more queries ({T}) than keys ({S}) is not supported by the exercise's kernels")
    require_written(flash_forward_kernel)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        # the backward runs later, outside the exercises backend's fallback: refuse now if it cannot run
        require_written(flash_backward_dkdv_kernel, flash_backward_dq_kernel)
    if Hkv != Hq:
        if Hkv == 0 or Hq % Hkv or k.shape != v.shape:
            raise ValueError(f"{OP}: the number of kv heads ({Hkv}) must divide the number of query heads ({Hq}); k {tuple(k.shape)}, v {tuple(v.shape)}")
        k, v = k.repeat_interleave(Hq // Hkv, dim=1), v.repeat_interleave(Hq // Hkv, dim=1)  # (B, Hq, S, D)
    return FlashAttention.apply(q, k, v, bool(causal), scale)

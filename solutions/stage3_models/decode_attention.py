"""Stage 3 exercise: decode attention in Triton, "flash decoding" (exercise decode_attention).

When a model generates, each step has ONE new query per head, and it attends to
every key in the KV cache: a buffer of S_max slots per head, allocated once and
filled as the text grows. Row b of the batch has ``cache_seqlens[b]`` slots
filled; the rest hold whatever was there (zeros, NaN, old tokens) and must never
reach the output.

    q (B, Hq, 1, D);  k_cache, v_cache (B, Hkv, S_max, D);  cache_seqlens (B,)
    out[b, h] = softmax_j(scale * q[b, h] . k[b, h // G, j]) @ v[b, h // G, j]     over j < cache_seqlens[b]

with G = Hq // Hkv query heads sharing each kv head (grouped-query attention).

FlashAttention's forward (stage 2) gives a program a block of *queries*; here
there is only one query per head, so one program per head would read all the
keys alone while most of the GPU waits. Flash decoding cuts the *keys* into
``n_splits`` contiguous splits of ``split_size`` slots and runs two kernels:

1. :func:`decode_split_kernel`, grid (B * Hkv, n_splits): one program takes one
   kv head of one row and one split, and runs the online softmax of stage 2 over
   the split's filled slots, for the G query heads of that kv head at once (so
   each K and V tile is loaded once for all of them). It writes, per query head
   and split, a *partial* result in float32:

       m    max_j s_j                  the largest scaled score s_j = scale * q . k_j of the split
       l    sum_j exp(s_j - m)
       acc  sum_j exp(s_j - m) v_j     (D,)

   A split with no filled slot writes m = -inf, l = 0, acc = 0.

2. :func:`decode_combine_kernel`, grid (B * Hq,): merges the splits of one query
   head. Each split summed its exponentials under its own max m_i; rescaled to
   the common max M = max_i m_i they add up:

       out = sum_i exp(m_i - M) acc_i / sum_i exp(m_i - M) l_i

Given here: the launchers (:func:`decode_split`, :func:`decode_combine`,
:func:`decode_attention_forward`) and :func:`decode_attention`, with the
signature of ``llm_course.ops.decode_attention``: the ``exercises`` backend runs
your kernels through it. The course's kernel
(``llm_course/backends/triton_ops/decode_attention.py``) also handles a sliding
window, a padding mask, strided caches, head sizes that are not powers of two,
and skips the splits past a row's length without writing anything.
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

OP = "decode_attention (exercise)"


# --- the kernels -----------------------------------------------------------------------------


@triton.jit
def decode_split_kernel(
    Q, K, V, SEQLENS, M, L, ACC,
    Hkv, S, split_size, n_splits, scale,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The partial result of one split for the GROUP query heads of one kv head of one row.

    The grid is (B * Hkv, n_splits): ``pid_bh = tl.program_id(0)`` is ``b * Hkv + h_kv``
    (so ``b = pid_bh // Hkv``, ``h_kv = pid_bh % Hkv``) and ``split = tl.program_id(1)``.

    Layouts (all contiguous; Hq = Hkv * GROUP, D = HEAD_DIM, a power of two >= 16):

    * Q (B, Hq, 1, D): element (b, h, d) at ``Q + (b * Hq + h) * D + d``;
    * K, V (B, Hkv, S, D): element (b, h_kv, j, d) at ``K + ((b * Hkv + h_kv) * S + j) * D + d``;
    * SEQLENS (B,) int32: the filled slots of row b are 0 .. SEQLENS[b] - 1 (at most S);
    * M, L (B, Hq, n_splits) and ACC (B, Hq, n_splits, D), float32, written here:
      (b, h, split) at ``(b * Hq + h) * n_splits + split`` (ACC: times D, plus d).

    Steps:

    1. The query heads of kv head h_kv are ``h = h_kv * GROUP + g`` for g < GROUP
       (query head h reads kv head h // GROUP). Load their q rows as a
       (BLOCK_G, D) tile, rows g >= GROUP masked (BLOCK_G >= 16 is a power of two,
       as ``tl.dot`` needs; the extra rows compute nothing that is stored).
       Note ``b * Hq + h == pid_bh * GROUP + g``.
    2. This split's slots: ``[split * split_size, split * split_size + split_size)``,
       cut to the filled ones: stop at ``min(..., SEQLENS[b])``. (An empty range
       is fine: the loop below does not run.)
    3. Running statistics in float32: ``m_i`` (BLOCK_G,) = -inf, ``l_i`` = 0,
       ``acc`` (BLOCK_G, D) = 0. Loop over blocks of BLOCK_N slots from the
       split's start to its stop: load k and v (BLOCK_N, D) masked to slots < stop,
       ``s = tl.dot(q, tl.trans(k)) * scale`` (BLOCK_G, BLOCK_N), -inf for slots
       >= stop, then stage 2's online softmax: ``m_new = max(m_i, rowmax(s))``,
       ``p = exp(s - m_new)``, ``alpha = exp(m_i - m_new)``,
       ``l_i = alpha * l_i + rowsum(p)``, ``acc = alpha * acc + p @ v``, ``m_i = m_new``.
    4. Store m_i, l_i and acc of the GROUP real rows at their (b, h, split).

    Hint: a block that starts below ``stop`` holds at least one filled slot, so
    m_new is finite from the first block on. ``tl.dot(p.to(v.dtype), v)``: both
    operands in one dtype. Never load a slot >= stop: it may hold NaN.
    """
    # BEGIN EXERCISE decode_attention
    # stub raises: "write decode_split_kernel: load the GROUP query rows of kv head h_kv, run the online softmax over this split's filled slots [split * split_size, min(.., SEQLENS[b])), and store m, l, acc per query head and split"
    pid_bh = tl.program_id(0)  # b * Hkv + h_kv
    split = tl.program_id(1)
    b = pid_bh // Hkv
    h_kv = pid_bh % Hkv
    offs_g = tl.arange(0, BLOCK_G)  # (BLOCK_G,) query heads of the group, GROUP of them real
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) slot offsets within a block
    offs_d = tl.arange(0, HEAD_DIM)
    g_ok = offs_g < GROUP

    heads = h_kv * GROUP + offs_g  # (BLOCK_G,) the query heads that read kv head h_kv (h // GROUP == h_kv)
    rows = b.to(tl.int64) * (Hkv * GROUP) + heads  # (BLOCK_G,) b * Hq + h
    q = tl.load(Q + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=g_ok[:, None], other=0.0)  # (BLOCK_G, D)
    kv_base = pid_bh.to(tl.int64) * S * HEAD_DIM  # (b * Hkv + h_kv) * S * D

    seqlen = tl.load(SEQLENS + b)
    start = split * split_size
    stop = tl.minimum(start + split_size, tl.minimum(seqlen, S))  # only the filled slots of this split

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + offs_n  # (BLOCK_N,) slots
        col_ok = cols < stop
        kv = kv_base + cols[:, None] * HEAD_DIM + offs_d[None, :]  # (BLOCK_N, D) offsets
        k = tl.load(K + kv, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + kv, mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_G, BLOCK_N) scaled scores
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    part = rows * n_splits + split  # (BLOCK_G,) where (b, h, split) lives
    tl.store(M + part, m_i, mask=g_ok)
    tl.store(L + part, l_i, mask=g_ok)
    tl.store(ACC + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=g_ok[:, None])
    # END EXERCISE decode_attention


@triton.jit
def decode_combine_kernel(M, L, ACC, O, n_splits, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    """Merge the n_splits partial results of one (row, query head) into its output.

    ``row = tl.program_id(0)`` is ``b * Hq + h``. M and L hold ``n_splits`` float32
    values at ``row * n_splits + i``; ACC the (n_splits, D) float32 block at
    ``(row * n_splits + i) * D + d``; the output O (B, Hq, 1, D), contiguous in the
    output's dtype, at ``row * D + d``. BLOCK_S is a power of two >= n_splits (and >= 2).

    Steps: load m (BLOCK_S,), masked to i < n_splits with -inf, l (0 there) and acc
    (BLOCK_S, D) (0 there); the common max ``m_max = max(m)``; each split's weight
    ``w = exp(m - m_max)``; ``out = sum(w * acc) / sum(w * l)``; store it in O's dtype.

    Hint: a row that sees no slot (cache_seqlens[b] = 0) has every m = -inf, and
    exp(-inf - (-inf)) is NaN: replace such an m_max by 0 (then every weight is 0),
    and divide by 1 where the sum of the weights times l is 0, so that the output is 0.
    """
    # BEGIN EXERCISE decode_attention
    # stub raises: "write decode_combine_kernel: load this row's m, l, acc for every split, rescale each split by exp(m_i - max(m)), and store sum(w * acc) / sum(w * l) (0 for a row with no filled slot)"
    row = tl.program_id(0).to(tl.int64)  # b * Hq + h
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < n_splits
    part = row * n_splits + offs_s  # (BLOCK_S,)
    m = tl.load(M + part, mask=s_ok, other=float("-inf"))
    l = tl.load(L + part, mask=s_ok, other=0.0)
    acc = tl.load(ACC + part[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0)  # (BLOCK_S, D)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # no slot at all: every weight 0, not NaN
    w = tl.exp(m - m_max)  # (BLOCK_S,) each split's rescale to the common max
    l_total = tl.sum(w * l, 0)
    o = tl.sum(w[:, None] * acc, 0) / tl.where(l_total > 0.0, l_total, 1.0)  # (D,)
    tl.store(O + row * HEAD_DIM + offs_d, o.to(O.dtype.element_ty))
    # END EXERCISE decode_attention


# --- the launchers ---------------------------------------------------------------------------


def default_blocks() -> dict:
    """Block size of the slots: small in the interpreter (faster there), GPU-sized otherwise."""
    return dict(block_n=16) if is_interpreter() or not has_gpu() else dict(block_n=64)


def default_splits(S: int) -> int:
    """How many splits for S_max slots: about 512 slots a split on a GPU (32 in the interpreter), at most 64."""
    per_split = 32 if is_interpreter() or not has_gpu() else 512
    return max(1, min(64, -(-S // per_split)))


def _launch_options() -> dict:
    return {} if is_interpreter() else dict(num_warps=4, num_stages=2)


def check_inputs(q, k_cache, v_cache, cache_seqlens) -> None:
    """Refuse, with a clear error, what these kernels do not handle."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(OP, name, t, ndim=4)
    check_tensor(OP, "cache_seqlens", cache_seqlens, dtypes=(torch.int32, torch.int64), ndim=1)
    check_same_device(OP, q=q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=cache_seqlens)
    check_same_dtype(OP, q=q, k_cache=k_cache, v_cache=v_cache)
    B, Hq, T, D = q.shape
    Bk, Hkv, S, Dk = k_cache.shape
    if T != 1 or Bk != B or Dk != D or v_cache.shape != k_cache.shape or tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"{OP}: q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}, "
                         f"cache_seqlens {tuple(cache_seqlens.shape)} must be (B, Hq, 1, D), (B, Hkv, S, D) twice and (B,)")  # fmt: skip
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{OP}: the number of kv heads ({Hkv}) must divide the number of query heads ({Hq})")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"{OP}: head dim {D} must be a power of two from 16 to 256")


def _output(out, like: torch.Tensor, name: str, shape, dtype) -> torch.Tensor:
    """``out`` if given (checked: shape, dtype, device, contiguous), else a new tensor."""
    if out is None:
        return torch.empty(shape, device=like.device, dtype=dtype)
    check_tensor(OP, name, out, dtypes=(dtype,), contiguous=True)
    if tuple(out.shape) != tuple(shape) or out.device != like.device:
        raise ValueError(f"{OP}: {name} must be {tuple(shape)} on {like.device}, got {tuple(out.shape)} on {out.device}")
    return out


def decode_split(q, k_cache, v_cache, cache_seqlens, *, num_splits, scale=None, block_n=None, m=None, l=None, acc=None):
    """Run :func:`decode_split_kernel` -> (m, l, acc): (B, Hq, n) and (B, Hq, n, D) float32, n = num_splits.

    The splits are ``split_size = ceil(S_max / num_splits)`` slots each. ``m``, ``l``,
    ``acc`` may be given (contiguous, of those shapes) to be written into.
    """
    check_inputs(q, k_cache, v_cache, cache_seqlens)
    B, Hq, _, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    n = max(1, int(num_splits))
    split_size = max(1, -(-S // n))
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    block_n = block_n or default_blocks()["block_n"]
    q, k_cache, v_cache = q.contiguous(), k_cache.contiguous(), v_cache.contiguous()
    m = _output(m, q, "m", (B, Hq, n), torch.float32)
    l = _output(l, q, "l", (B, Hq, n), torch.float32)
    acc = _output(acc, q, "acc", (B, Hq, n, D), torch.float32)
    if m.numel() == 0:
        return m, l, acc
    require_written(decode_split_kernel)
    G = Hq // Hkv
    decode_split_kernel[(B * Hkv, n)](
        q, k_cache, v_cache, cache_seqlens.to(torch.int32), m, l, acc,
        Hkv, S, split_size, n, scale,
        GROUP=G, BLOCK_G=max(16, triton.next_power_of_2(G)), HEAD_DIM=D, BLOCK_N=block_n, **_launch_options(),
    )  # fmt: skip
    return m, l, acc


def decode_combine(m, l, acc, *, out=None, dtype=None):
    """Run :func:`decode_combine_kernel`: m, l (B, Hq, n); acc (B, Hq, n, D) -> out (B, Hq, 1, D).

    ``out`` may be given (contiguous); otherwise it is made in ``dtype`` (default float32).
    """
    for name, t in (("m", m), ("l", l), ("acc", acc)):
        check_tensor(OP, name, t, dtypes=(torch.float32,), contiguous=True)
    B, Hq, n, D = acc.shape
    if tuple(m.shape) != (B, Hq, n) or tuple(l.shape) != (B, Hq, n):
        raise ValueError(f"{OP}: m {tuple(m.shape)} and l {tuple(l.shape)} must be (B, Hq, n) = {(B, Hq, n)} for acc {tuple(acc.shape)}")
    out = _output(out, acc, "out", (B, Hq, 1, D), dtype or (out.dtype if out is not None else torch.float32))
    if out.numel() == 0:
        return out
    require_written(decode_combine_kernel)
    decode_combine_kernel[(B * Hq,)](m, l, acc, out, n, HEAD_DIM=D, BLOCK_S=max(2, triton.next_power_of_2(n)), **_launch_options())
    return out


def decode_attention_forward(q, k_cache, v_cache, cache_seqlens, *, scale=None, num_splits=None, block_n=None, out=None):
    """Both kernels: q (B, Hq, 1, D); caches (B, Hkv, S_max, D); cache_seqlens (B,) -> (B, Hq, 1, D) in q's dtype."""
    check_inputs(q, k_cache, v_cache, cache_seqlens)
    require_written(decode_split_kernel, decode_combine_kernel)
    if k_cache.shape[2] == 0:  # an empty cache: every row sees nothing
        return _output(out, q, "out", q.shape, q.dtype).zero_()
    n = num_splits or default_splits(k_cache.shape[2])
    m, l, acc = decode_split(q, k_cache, v_cache, cache_seqlens, num_splits=n, scale=scale, block_n=block_n)
    return decode_combine(m, l, acc, out=out, dtype=q.dtype)


# --- the op -----------------------------------------------------------------------------------


def decode_attention(q, k_cache, v_cache, cache_seqlens, *, scale=None, window=None, key_padding_mask=None):
    """``llm_course.ops.decode_attention`` with your kernels: q (B, Hq, 1, D) -> (B, Hq, 1, D).

    Forward only (decode is inference). What these kernels do not handle -- a
    window, a padding mask, a gradient, head dims that are not powers of two from
    16 to 256 -- raises NotImplementedError, and the ``exercises`` backend then runs
    the course's kernel.
    """
    unsupported = [name for name, given in (("window", window is not None), ("key_padding_mask", key_padding_mask is not None)) if given]
    if unsupported:
        raise NotCovered(f"{OP}: {', '.join(unsupported)} is not supported by the exercise's kernels (the course's kernel handles it)")
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in (q, k_cache, v_cache)):
        raise NotCovered(f"{OP}: a gradient is not supported by the exercise's kernels (decode is inference)")
    D = q.shape[-1] if isinstance(q, torch.Tensor) else 0
    if D < 16 or D > 256 or D & (D - 1):
        raise NotCovered(f"{OP}: head dim {D} is not supported by the exercise's kernels (powers of two from 16 to 256)")
    require_written(decode_split_kernel, decode_combine_kernel)
    return decode_attention_forward(q, k_cache, v_cache, cache_seqlens, scale=scale)

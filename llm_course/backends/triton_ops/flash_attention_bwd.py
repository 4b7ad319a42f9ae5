"""The FlashAttention backward in Triton: dQ, dK, dV without the T x S matrix.

The forward kept only O and the log-sum-exp ``lse`` of each query row. That is
enough to *recompute* any block of probabilities exactly:

    P_ij = exp(scale * q_i . k_j - lse_i)

and the gradients, block by block, are (dO is the gradient of the output)

    dV  = P^T dO                                   (S, D)
    dP  = dO V^T                                   (T, S), one block at a time
    dS  = P * (dP - delta),  delta_i = sum_d dO_id O_id = rowsum(dO * O)
    dQ  = scale * dS K                             (T, D)
    dK  = scale * dS^T Q                           (S, D)

``delta`` is the softmax's correction term: the gradient of a softmax row is
``P * (dP - sum_j P_j dP_j)``, and ``sum_j P_ij dP_ij = dO_i . O_i`` -- one dot
product per row, computed once by a small preprocess kernel.

The FlashAttention-2 scheme, three kernels:

1. ``_bwd_preprocess_kernel``: delta (B, Hq, T), and the lse in base 2;
2. ``_bwd_dkdv_kernel``: one program owns a block of keys of one kv head, keeps
   k, v and the dK, dV accumulators on chip, and walks over the query blocks of
   every query head of its group (grouped-query attention): dK and dV are
   written once, without atomics;
3. ``_bwd_dq_kernel``: one program owns a block of queries and walks over the
   key blocks, like the forward.

dQ in its own kernel recomputes P a second time, but needs no atomic adds: the
result is deterministic, bit for bit. As in the forward, blocks that need no
mask run in a loop without masking, and fully masked blocks are skipped.
"""

from __future__ import annotations

import math

import torch

from llm_course.device import configure_triton

configure_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.triton_ops.checks import check_tensor  # noqa: E402
from llm_course.backends.triton_ops.flash_common import (  # noqa: E402
    LOG2E,
    OP,
    heads_split_empty,
    key_range,
    query_range,
    seq_bucket,
)
from llm_course.backends.triton_ops.launch import cdiv  # noqa: E402
from llm_course.device import autotune_configs  # noqa: E402

# --- 1. preprocess: delta = rowsum(dO * O) ----------------------------------------------------


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, LSE, DELTA, LSE2,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_db, stride_dh, stride_dt, stride_dd,
    n_heads, T,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O) (B, Hq, T); lse2 = lse * log2(e), with -inf (a row that saw no key) -> +inf.

    With lse2 = +inf the recomputed probabilities exp2(s - lse2) of an empty row are 0, not NaN.
    """
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    o = tl.load(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
                + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od, mask=row_ok[:, None], other=0.0)  # fmt: skip
    do = tl.load(DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh
                 + offs_m[:, None] * stride_dt + offs_d[None, :] * stride_dd, mask=row_ok[:, None], other=0.0)  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)  # (BLOCK_M,)
    rows = pid_bh.to(tl.int64) * T + offs_m
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(DELTA + rows, delta, mask=row_ok)
    tl.store(LSE2 + rows, lse2, mask=row_ok)


# --- 2. dK and dV: one program per key block, looping over queries -----------------------------


@triton.jit
def _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, lse2_ptr, delta_ptr, offs_n, offs_m_base,
                 start, stop, stride_qt, stride_dt, qk_scale, T, S, window,
                 BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Accumulate dK, dV (BLOCK_N, D) of one key block over the query blocks [start, stop).

    Works in the transposed layout, keys along rows: sT, pT, dpT, dsT are (BLOCK_N, BLOCK_M).
    """
    off = S - T
    q_ptrs += start * stride_qt
    do_ptrs += start * stride_dt
    for start_m in range(start, stop, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_m_base  # (BLOCK_M,) query positions
        if MASKED:
            row_ok = offs_m < T
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
            lse2 = tl.load(lse2_ptr + offs_m, mask=row_ok, other=float("inf"))
        else:
            q = tl.load(q_ptrs)
            lse2 = tl.load(lse2_ptr + offs_m)
        sT = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M) scores, base 2
        if MASKED:
            keep = row_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[:, None] <= offs_m[None, :] + off)
            if HAS_WINDOW:
                keep = keep & (offs_n[:, None] > offs_m[None, :] + off - window)
            sT = tl.where(keep, sT, float("-inf"))  # masked: probability exp2(-inf) = 0
        pT = tl.exp2(sT - lse2[None, :])  # the probabilities, recomputed exactly
        if MASKED:  # ... and 0 also for a row whose lse is NaN (it saw a NaN key)
            pT = tl.where(keep, pT, 0.0)
        if MASKED:
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
            delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)
        else:
            do = tl.load(do_ptrs)
            delta = tl.load(delta_ptr + offs_m)
        dv = tl.dot(pT.to(do.dtype), do, dv)  # dV += P^T dO
        dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        dsT = pT * (dpT - delta[None, :])  # dS = P * (dP - delta)
        if MASKED:  # 0 * NaN = NaN: a NaN delta (a row that saw a NaN value) or v must not reach masked pairs
            dsT = tl.where(keep, dsT, 0.0)
        dk = tl.dot(dsT.to(q.dtype), q, dk)  # dK += dS^T Q (times scale at the end)
        q_ptrs += BLOCK_M * stride_qt
        do_ptrs += BLOCK_M * stride_dt
    return dk, dv


_DKDV_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (32, 128, 4, 5), (32, 128, 8, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 4), (64, 128, 8, 2),
        ]
    ],  # fmt: skip
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1),
)


@triton.autotune(configs=_DKDV_CONFIGS, key=["T_BUCKET", "S_BUCKET", "HEAD_DIM", "GROUP", "CAUSAL", "HAS_WINDOW"])
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE2, DELTA, DK, DV, PAD,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_db, stride_dh, stride_dt, stride_dd,
    stride_pb, stride_ps,
    stride_gb, stride_gh, stride_gs,  # DK and DV (last stride 1)
    n_kv_heads, T, S, qk_scale, scale, window,
    T_BUCKET, S_BUCKET,  # only for the autotuning key
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
):  # fmt: skip
    """One program: keys [n0, n0 + BLOCK_N) of one (batch, kv head); writes DK, DV (B, Hkv, S, D) through strides."""
    pid_bh = tl.program_id(1)
    b = pid_bh // n_kv_heads
    h_kv = pid_bh % n_kv_heads
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < S

    # k and v of this block stay in registers for the whole loop
    k = tl.load(K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
                + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd, mask=col_ok[:, None], other=0.0)  # fmt: skip
    v = tl.load(V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
                + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd, mask=col_ok[:, None], other=0.0)  # fmt: skip
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    lo, mid_lo, mid_hi, hi = query_range(n0, T, S, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    for g in range(GROUP):  # every query head that shares this kv head
        h = h_kv * GROUP + g
        bh = b * (n_kv_heads * GROUP) + h  # row of the (B, Hq, T) lse and delta
        q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd
        do_ptrs = DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh + offs_m[:, None] * stride_dt + offs_d[None, :] * stride_dd
        lse2_ptr = LSE2 + bh.to(tl.int64) * T
        delta_ptr = DELTA + bh.to(tl.int64) * T
        # masked: the causal diagonal
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, lse2_ptr, delta_ptr, offs_n, offs_m,
                              lo, mid_lo, stride_qt, stride_dt, qk_scale, T, S, window,
                              BLOCK_M, True, CAUSAL, HAS_WINDOW)  # fmt: skip
        # unmasked: queries that see the whole block
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, lse2_ptr, delta_ptr, offs_n, offs_m,
                              mid_lo, mid_hi, stride_qt, stride_dt, qk_scale, T, S, window,
                              BLOCK_M, False, CAUSAL, HAS_WINDOW)  # fmt: skip
        # masked: the window's edge and the ragged end of the queries
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, lse2_ptr, delta_ptr, offs_n, offs_m,
                              mid_hi, hi, stride_qt, stride_dt, qk_scale, T, S, window,
                              BLOCK_M, True, CAUSAL, HAS_WINDOW)  # fmt: skip
    if HAS_PAD:  # a padding key got probability 0 from every query: its gradients are 0
        real = tl.load(PAD + b.to(tl.int64) * stride_pb + offs_n * stride_ps, mask=col_ok, other=0) != 0
        dk = tl.where(real[:, None], dk, 0.0)
        dv = tl.where(real[:, None], dv, 0.0)
    dk = dk * scale
    out = b.to(tl.int64) * stride_gb + h_kv.to(tl.int64) * stride_gh + offs_n[:, None] * stride_gs + offs_d[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


# --- 3. dQ: one program per query block, looping over keys ---------------------------------------


@triton.jit
def _dq_blocks(dq, q, do, lse2, delta, k_ptrs, v_ptrs, pad_ptrs, offs_m, offs_n_base,
               start, stop, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr):
    """Accumulate dQ (BLOCK_M, D) of one query block over the key blocks [start, stop)."""
    off = S - T
    k_ptrs += start * stride_ks
    v_ptrs += start * stride_vs
    for start_n in range(start, stop, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n_base
        if HAS_PAD:  # padding keys read as 0: a NaN there would reach dQ through the dots (0 * NaN = NaN)
            real = tl.load(pad_ptrs + offs_n * stride_ps, mask=offs_n < S, other=0) != 0
            k = tl.load(k_ptrs, mask=((offs_n < S) & real)[:, None], other=0.0)  # (BLOCK_N, D)
            v = tl.load(v_ptrs, mask=((offs_n < S) & real)[:, None], other=0.0)
        elif MASKED:
            k = tl.load(k_ptrs, mask=(offs_n < S)[:, None], other=0.0)  # (BLOCK_N, D)
            v = tl.load(v_ptrs, mask=(offs_n < S)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        if MASKED:  # keys some rows cannot see: their NaN or inf must not reach those rows either; the
            # rows that do see one have a NaN lse or delta from the forward, so their dQ stays NaN
            k = tl.where(tl.abs(k.to(tl.float32)) < float("inf"), k, 0.0).to(k.dtype)
            v = tl.where(tl.abs(v.to(tl.float32)) < float("inf"), v, 0.0).to(v.dtype)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        if MASKED:
            keep = (offs_n < S)[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + off)
            if HAS_WINDOW:
                keep = keep & (offs_n[None, :] > offs_m[:, None] + off - window)
            s = tl.where(keep, s, float("-inf"))
        if HAS_PAD:
            s = tl.where(real[None, :], s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])  # the probabilities, recomputed exactly; masked ones are 0
        dp = tl.dot(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)  # dQ += dS K (times scale at the end)
        k_ptrs += BLOCK_N * stride_ks
        v_ptrs += BLOCK_N * stride_vs
    return dq


_DQ_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (128, 32, 4, 5), (128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4), (128, 64, 8, 2),
        ]
    ],  # fmt: skip
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1),
)


@triton.autotune(configs=_DQ_CONFIGS, key=["T_BUCKET", "S_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "HAS_PAD"])
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE2, DELTA, DQ, PAD,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_db, stride_dh, stride_dt, stride_dd,
    stride_pb, stride_ps,
    stride_gb, stride_gh, stride_gt,  # DQ (last stride 1)
    n_heads, T, S, qk_scale, scale, window,
    T_BUCKET, S_BUCKET,  # only for the autotuning key
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
):  # fmt: skip
    """One program: queries [m0, m0 + BLOCK_M) of one (batch, query head); writes DQ (B, Hq, T, D) through strides."""
    pid_m = tl.program_id(0)
    if CAUSAL:  # longest rows first, as in the forward
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    h_kv = h // GROUP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T

    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)  # fmt: skip
    do = tl.load(DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh
                 + offs_m[:, None] * stride_dt + offs_d[None, :] * stride_dd, mask=row_ok[:, None], other=0.0)  # fmt: skip
    rows = pid_bh.to(tl.int64) * T + offs_m
    lse2 = tl.load(LSE2 + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    k_ptrs = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd
    v_ptrs = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
    pad_ptrs = PAD + b.to(tl.int64) * stride_pb
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    lo, mid_lo, mid_hi, hi = key_range(m0, T, S, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_WINDOW:
        dq = _dq_blocks(dq, q, do, lse2, delta, k_ptrs, v_ptrs, pad_ptrs, offs_m, offs_n,
                        lo, mid_lo, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
                        BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_PAD)  # fmt: skip
    dq = _dq_blocks(dq, q, do, lse2, delta, k_ptrs, v_ptrs, pad_ptrs, offs_m, offs_n,
                    mid_lo, mid_hi, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
                    BLOCK_N, False, CAUSAL, HAS_WINDOW, HAS_PAD)  # fmt: skip
    dq = _dq_blocks(dq, q, do, lse2, delta, k_ptrs, v_ptrs, pad_ptrs, offs_m, offs_n,
                    mid_hi, hi, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
                    BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_PAD)  # fmt: skip
    dq = dq * scale
    out = b.to(tl.int64) * stride_gb + h.to(tl.int64) * stride_gh + offs_m[:, None] * stride_gt + offs_d[None, :]
    tl.store(DQ + out, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


# --- the launcher -------------------------------------------------------------------------------


def flash_attention_backward(q, k, v, o, lse, do, *, causal=True, scale=None, window=None, key_padding_mask=None,
                             out=None):  # fmt: skip
    """dQ, dK, dV of attention from the forward's inputs, output ``o`` and ``lse`` (B, Hq, T) float32.

    ``do`` is the gradient of ``o``; returns ``(dq, dk, dv)`` shaped like q, k, v and
    stored like the forward's output (:func:`heads_split_empty`), or written into
    ``out=(dq, dk, dv)``: views shaped like q, k, v whose last stride is 1 (say, the
    three parts of one packed gradient, see ``qkv_attention.py``).
    """
    check_tensor(OP, "do", do, ndim=4, dtypes=(q.dtype,))
    check_tensor(OP, "o", o, ndim=4, dtypes=(q.dtype,))
    check_tensor(OP, "lse", lse, ndim=3, dtypes=(torch.float32,), contiguous=True)
    if do.shape != q.shape or o.shape != q.shape or lse.shape != q.shape[:3]:
        raise ValueError(
            f"{OP}: backward shapes disagree: q {tuple(q.shape)}, o {tuple(o.shape)}, "
            f"do {tuple(do.shape)}, lse {tuple(lse.shape)} (expected q.shape[:3])"
        )
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if out is not None:
        dq, dk, dv = out
    else:
        dq = heads_split_empty(B, Hq, T, D, like=q)  # stored (B, T, H, D): on their way back to the
        dk = heads_split_empty(B, Hkv, S, D, like=k)  # projection the gradients need no copy
        dv = heads_split_empty(B, Hkv, S, D, like=v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()

    delta = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
    lse2 = torch.empty_like(delta)
    pre_block = 64
    _bwd_preprocess_kernel[(cdiv(T, pre_block), B * Hq)](
        o, do, lse, delta, lse2, *o.stride(), *do.stride(), Hq, T, HEAD_DIM=D, BLOCK_M=pre_block,
    )  # fmt: skip

    pad = key_padding_mask.view(torch.uint8) if key_padding_mask is not None else delta  # delta: a dummy pointer
    pad_strides = pad.stride() if key_padding_mask is not None else (0, 0)
    common = dict(
        GROUP=Hq // Hkv, HEAD_DIM=D, CAUSAL=bool(causal), HAS_WINDOW=window is not None,
        HAS_PAD=key_padding_mask is not None,
    )  # fmt: skip
    strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *pad_strides)
    qk_scale = scale * LOG2E
    _bwd_dkdv_kernel[lambda meta: (cdiv(S, meta["BLOCK_N"]), B * Hkv)](
        q, k, v, do, lse2, delta, dk, dv, pad, *strides, *dk.stride()[:3],
        Hkv, T, S, qk_scale, scale, window or 0, seq_bucket(T), seq_bucket(S), **common,
    )  # fmt: skip
    _bwd_dq_kernel[lambda meta: (cdiv(T, meta["BLOCK_M"]), B * Hq)](
        q, k, v, do, lse2, delta, dq, pad, *strides, *dq.stride()[:3],
        Hq, T, S, qk_scale, scale, window or 0, seq_bucket(T), seq_bucket(S), **common,
    )  # fmt: skip
    return dq, dk, dv

"""FlashAttention in Triton: attention that never builds the T x S score matrix.

Naive attention computes ``P = softmax(Q K^T * scale)`` as a (T, S) matrix per
head, writes it to memory, and reads it back to compute ``O = P V``: memory
grows as T * S. FlashAttention (Dao et al., 2022; FlashAttention-2, Dao 2023)
cuts the keys into blocks and keeps, for each query row, a *running* softmax
(notebook 02a derives it):

    m   running max of the scores seen so far                 (BLOCK_M,)
    l   running sum of exp(score - m)                         (BLOCK_M,)
    acc running sum of exp(score - m) * v                     (BLOCK_M, D)

When a new block raises the max from m to m', everything accumulated so far is
rescaled by ``alpha = exp(m - m')``. At the end ``O = acc / l`` and the
log-sum-exp ``lse = m + log(l)`` is saved: it is all the backward needs to
recompute P block by block (``flash_attention_bwd.py``).

This file has the three layers of every kernel in the course:

1. ``_flash_fwd_kernel``: one program computes BLOCK_M query rows of one head;
2. ``flash_attention_forward``: the launcher (constants, input checks and block ranges
   shared with the backward are in ``flash_common.py``);
3. ``FlashAttention`` (a ``torch.autograd.Function``) and ``attention``, the
   function registered as backend "triton" of ``llm_course.ops.attention``.

What makes it fast (Triton's fused-attention tutorial does the same):

* the exponentials use ``exp2``, with log2(e) folded into the scale;
* key blocks that need no mask (the bulk of them) run in a loop without any
  masking; only the few blocks on the causal diagonal, at the window's edge or
  at the ragged end of the keys run the masked loop;
* key blocks that are masked out entirely (above the causal diagonal, before
  the window) are never visited: causal attention does half the work;
* the guard that keeps a NaN in a hidden key's value out of the other rows of its
  block runs only where a row came out NaN, in a second launch (see the kernel);
* grouped-query attention reads the shared K/V head directly: query head h uses
  kv head ``h // (Hq // Hkv)``, nothing is repeated or copied;
* the running max is taken over the raw scores q . k (the scale is positive), so
  scaling a score and subtracting the max is one fused multiply-add;
* block sizes, warps and pipeline stages are autotuned on a GPU;
* on Hopper and newer GPUs the key and value blocks of the loop are copied by the
  tensor memory accelerator (TMA): one instruction moves a whole (BLOCK_N, D) block
  from memory to shared memory, with no address arithmetic in registers and rows
  past the end read as zeros (see ``tma_descriptors`` below).

Tried on Hopper and left out, because they made it slower or changed nothing
(``results/h200/flash_fwd_*``, ``results/h100/flash_fwd_overlap_and_pointers.txt``):
Triton 3.6's warp specialization of the key loop; FlashAttention-4's conditional
rescale (a branch per key block, which keeps Triton from overlapping one block's
matrix products with the next one's softmax); and issuing the next block's
``Q K^T`` before this block's softmax by hand (FlashAttention-3's overlap: with 4
warps the second score tile spills registers, with 8 it gains nothing).

Conventions (the contract of ``llm_course.ops.attention``): q (B, Hq, T, D);
k, v (B, Hkv, S, D); query i sees key j when

    j <= i + (S - T)                  if causal (aligned to the end of the keys)
    j >  i + (S - T) - window         if a window is given
    key_padding_mask[b, j] is True    if a padding mask is given

A query row that sees no key at all gets output 0 and lse = -inf. A key a row
does not see never reaches its output, even when its k or v holds NaN or inf
(padding, unwritten cache slots); a row that sees such a key gets NaN.
"""

from __future__ import annotations

import math

import torch

from llm_course.device import configure_triton

configure_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends.triton_ops.flash_attention_bwd import flash_attention_backward  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.flash_common import (  # noqa: E402
    LOG2E,
    OP,
    check_attention_inputs,
    heads_split_empty,
    key_range,
    seq_bucket,
)
from llm_course.backends.triton_ops.launch import cdiv, compute_capability  # noqa: E402
from llm_course.device import autotune_configs, is_interpreter  # noqa: E402

try:  # Triton 3.4 and newer: descriptors built on the host, for loads by the tensor memory accelerator
    from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402
except ImportError:  # an older Triton: the kernel's pointer loads only
    TensorDescriptor = None

# --- 1. the kernel -----------------------------------------------------------------------


@triton.jit
def _fwd_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, kv_b, kv_h, pad_ptrs, offs_m, offs_n_base,
                start, stop, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
                HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr, GUARD: tl.constexpr, USE_TMA: tl.constexpr):
    """The online-softmax update over the key blocks [start, stop).

    q (BLOCK_M, D); acc (BLOCK_M, D), l_i and m_i (BLOCK_M,) in float32. m_i is in
    base 2: the running max of ``q . k * qk_scale`` with ``qk_scale = scale * log2(e)``.
    GUARD: keep non-finite values out of the rows that cannot see them (the kernel's REPAIR launch).
    USE_TMA: read K and V through the descriptors ``k_desc``, ``v_desc`` of (B, Hkv, S, D) at
    batch ``kv_b``, kv head ``kv_h`` instead of through ``k_ptrs``, ``v_ptrs``; rows past S read as 0.
    """
    off = S - T
    k_ptrs += start * stride_ks
    v_ptrs += start * stride_vs
    for start_n in range(start, stop, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n_base  # (BLOCK_N,) key positions
        if USE_TMA:  # one copy of the whole block by the TMA; past S it reads zeros, as the mask below
            k = k_desc.load([kv_b, kv_h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        elif MASKED:  # the ragged end of the keys: don't read past S
            k = tl.load(k_ptrs, mask=(offs_n < S)[:, None], other=0.0)  # (BLOCK_N, D)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N) raw scores q . k
        if MASKED:
            keep = (offs_n < S)[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + off)
            if HAS_WINDOW:
                keep = keep & (offs_n[None, :] > offs_m[:, None] + off - window)
            qk = tl.where(keep, qk, float("-inf"))
        if HAS_PAD:
            real = tl.load(pad_ptrs + offs_n * stride_ps, mask=offs_n < S, other=0) != 0
            qk = tl.where(real[None, :], qk, float("-inf"))
        # online softmax in base 2: the new running max of the scaled scores (scale > 0,
        # so the max of qk times the scale is the max of the scaled scores) ...
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # ... (a row whose keys are all masked has m = -inf: subtract 0 instead, no NaN;
        # without a mask every score is finite and the check is left out) ...
        if MASKED or HAS_PAD:
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_sub = m_new
        # ... then p = exp2(qk * scale * log2(e) - m): one fused multiply-add a score
        p = tl.exp2(qk * qk_scale - m_sub[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.exp2(m_i - m_sub)  # (BLOCK_M,) rescale factor for the old sums
        l_i = l_i * alpha + tl.sum(p, 1)
        if USE_TMA:
            v = v_desc.load([kv_b, kv_h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
            if HAS_PAD:  # padding keys' values as 0 (see below)
                v = tl.where(real[:, None], v, 0.0).to(v.dtype)
        elif HAS_PAD:  # padding keys' values read as 0: in the dot, p = 0 times a NaN would still be NaN
            v = tl.load(v_ptrs, mask=((offs_n < S) & real)[:, None], other=0.0)  # (BLOCK_N, D)
        elif MASKED:
            v = tl.load(v_ptrs, mask=(offs_n < S)[:, None], other=0.0)  # (BLOCK_N, D)
        else:
            v = tl.load(v_ptrs)
        acc = acc * alpha[:, None]
        if GUARD and MASKED and (CAUSAL or HAS_WINDOW):
            # Some rows see a key that others cannot (causal diagonal, window edge). A NaN or
            # inf in its value would reach those others through the dot (0 * NaN = NaN), so the
            # dot gets finite values only, and the rows that do see a non-finite value get NaN.
            v_ok = tl.abs(v) < float("inf")  # (BLOCK_N, D), in v's dtype: False for NaN and +-inf
            v_bad = tl.max(tl.where(v_ok, 0, 1), 1)  # (BLOCK_N,): 1 for a key with a non-finite value
            sees_bad = tl.max(tl.where(keep & (v_bad[None, :] > 0), 1, 0), 1)  # (BLOCK_M,)
            acc = tl.where(sees_bad[:, None] > 0, float("nan"), acc)
            v = tl.where(v_ok, v, 0.0).to(v.dtype)
        acc = tl.dot(p.to(v.dtype), v, acc)  # P in the input dtype, accumulated in fp32
        m_i = m_new
        k_ptrs += BLOCK_N * stride_ks
        v_ptrs += BLOCK_N * stride_vs
    return acc, l_i, m_i


@triton.jit
def _fwd_row_block(q_base, k_base, v_base, o_base, lse_row, pad_ptrs, k_desc, v_desc, kv_b, kv_h, m0,
                   stride_qt, stride_qd, stride_ks, stride_kd, stride_vs, stride_vd,
                   stride_ot, stride_od, stride_ps, T, S, qk_scale, window,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
                   GUARD: tl.constexpr, USE_TMA: tl.constexpr):
    """Query rows [m0, m0 + BLOCK_M) of one head: visit their key blocks, write their O and lse.

    The ``*_base`` pointers point at this (batch, head)'s first row; ``lse_row`` at its (T,) lse.
    """
    offs_m = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key offsets within a block
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = q_base + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd  # (BLOCK_M, D)
    k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd  # (BLOCK_N, D)
    v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd  # (BLOCK_N, D)
    row_ok = offs_m < T
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # stays in registers for the whole loop

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    lo, mid_lo, mid_hi, hi = key_range(m0, T, S, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_WINDOW:  # stage 1: blocks cut by the window's lower edge
        acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, kv_b, kv_h, pad_ptrs, offs_m, offs_n,
                                    lo, mid_lo, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
                                    HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_PAD, GUARD, USE_TMA)  # fmt: skip
    # stage 2: blocks every row sees entirely -- no mask, the fast path
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, kv_b, kv_h, pad_ptrs, offs_m, offs_n,
                                mid_lo, mid_hi, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
                                HEAD_DIM, BLOCK_N, False, CAUSAL, HAS_WINDOW, HAS_PAD, GUARD, USE_TMA)  # fmt: skip
    # stage 3: the causal diagonal and the ragged end of the keys
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, kv_b, kv_h, pad_ptrs, offs_m, offs_n,
                                mid_hi, hi, stride_ks, stride_vs, stride_ps, qk_scale, T, S, window,
                                HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_PAD, GUARD, USE_TMA)  # fmt: skip

    # epilogue: O = acc / l; a row that saw no key has l = 0: output 0, lse = -inf
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # base 2 -> natural log
    if (CAUSAL or HAS_WINDOW) and not GUARD:  # mark a row holding NaN for the second launch
        row_sum = tl.sum(acc, 1)  # (BLOCK_M,) NaN if any of the row is
        lse = tl.where(row_sum == row_sum, lse, float("nan"))
    o_ptrs = o_base + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, o.to(o_base.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_row + offs_m, lse, mask=row_ok)


# The second launch (see the kernel): each program checks REPAIR_ROWS rows of one head for
# a mark, and recomputes, in blocks of REPAIR_BLOCK rows, those that hold one. Nearly always
# there is none, so a program is one load and a return: big chunks keep the grid small.
REPAIR_ROWS, REPAIR_BLOCK = 1024, 64
REPAIR_ROWS_INTERPRETER, REPAIR_BLOCK_INTERPRETER = 64, 16  # on the CPU: small, so that tests reach every path


def _tma_block_shapes(nargs: dict) -> None:
    """Autotune pre-hook: the K and V descriptors copy blocks of the config about to run.

    A descriptor carries its block shape, (1, 1, BLOCK_N, D) here, but BLOCK_N is only
    known once the autotuner has picked a config; it calls this before every launch.
    """
    for name in ("K_DESC", "V_DESC"):
        if nargs[name] is not None:
            nargs[name].block_shape = [1, 1, nargs["BLOCK_N"], nargs["HEAD_DIM"]]


_FWD_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_tma_block_shapes)
        for bm, bn, w, s in [
            (128, 64, 8, 3), (128, 64, 4, 3), (128, 64, 4, 2), (128, 64, 8, 4), (128, 128, 8, 3), (64, 64, 4, 3),
        ]
    ],  # fmt: skip
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1, pre_hook=_tma_block_shapes),
)


# The tiles worth timing when K and V come through the TMA (head dim 128 on Hopper): in a sweep of
# 18 tiles on an H200 (results/h200/flash_fwd_tma_sweep.txt), these three won every case.
# (128, 64, 4 warps, 2 stages) fits two programs on an SM, whose math and loads then overlap.
TMA_TILES = {(128, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 3)}  # (BLOCK_M, BLOCK_N, num_warps, num_stages)


def prune_fwd_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Autotuner hook: with TMA loads, time only :data:`TMA_TILES`. Fewer candidates: less to compile,
    and less chance that the noise of a short timing picks a slower tile."""
    if len(configs) == 1 or not kwargs.get("USE_TMA", named_args.get("USE_TMA")):
        return configs
    keep = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in TMA_TILES]
    return keep or configs


@triton.autotune(
    configs=_FWD_CONFIGS,
    key=["T_BUCKET", "S_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "HAS_PAD", "USE_TMA"],
    prune_configs_by={"early_config_prune": prune_fwd_configs},
)
@triton.jit
def _flash_fwd_kernel(
    Q, K, V, O, LSE, PAD,
    K_DESC, V_DESC,  # TMA descriptors of K and V (B, Hkv, S, D) when USE_TMA, else None
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_pb, stride_ps,
    n_heads, T, S, qk_scale, window,
    T_BUCKET, S_BUCKET,  # only for the autotuning key
    GROUP: tl.constexpr,  # query heads per kv head (Hq // Hkv)
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
    REPAIR: tl.constexpr,  # the second launch: redo, with the guard, the row blocks the first one marked
    USE_TMA: tl.constexpr = False,  # K and V blocks through K_DESC and V_DESC (see tma_descriptors)
    REPAIR_ROWS: tl.constexpr = 1,  # rows one program of the second launch checks
):  # fmt: skip
    """One program: query rows [m0, m0 + BLOCK_M) of one (batch, query head).

    Writes O (B, Hq, T, D) and LSE (B, Hq, T) in float32 (natural log).

    NaN from keys a row cannot see. On the causal diagonal (and the window's edge) the
    rows of a block see different keys, and the dot P @ V mixes them all: p = 0 times a
    NaN or inf in the value of a key a row cannot see is NaN all the same. Guarding every
    such block (``GUARD`` in ``_fwd_blocks``) cost the whole causal kernel 10-15% of its
    speed on an H200, though only a few blocks need it (at T = 16k, one in 60): code the
    compiler must fit anywhere in a kernel shapes all of it. So the first launch has no
    guard; it marks a row whose output holds NaN (lse = NaN), and a second, cheap launch
    (``REPAIR``: one program per REPAIR_ROWS rows) computes again, with the guard, only
    the row blocks that hold a mark. Such a row either saw a non-finite value itself (it
    stays NaN) or caught one from a key it cannot see (it comes out right).
    """
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    h_kv = h // GROUP  # grouped-query attention: the kv head this query head shares
    # 64-bit offsets: B * H * T * D can exceed 2**31 at long sequence lengths
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    lse_row = LSE + pid_bh.to(tl.int64) * T  # (T,) this head's lse
    pad_ptrs = PAD + b.to(tl.int64) * stride_pb  # (S,) row of the padding mask (unused without one)

    if REPAIR:
        first = tl.program_id(0) * REPAIR_ROWS
        rows = first + tl.arange(0, REPAIR_ROWS)
        marked = tl.load(lse_row + rows, mask=rows < T, other=0.0)  # (REPAIR_ROWS,) NaN marks a row
        if tl.max((marked != marked).to(tl.int32)) == 0:
            return  # the usual case: nothing to redo
        for m0 in range(first, tl.minimum(first + REPAIR_ROWS, T), BLOCK_M):
            offs = m0 + tl.arange(0, BLOCK_M)
            block_marked = tl.load(lse_row + offs, mask=offs < T, other=0.0)  # (BLOCK_M,)
            if tl.max((block_marked != block_marked).to(tl.int32)) > 0:
                _fwd_row_block(q_base, k_base, v_base, o_base, lse_row, pad_ptrs, K_DESC, V_DESC, b, h_kv, m0,
                               stride_qt, stride_qd, stride_ks, stride_kd, stride_vs, stride_vd, stride_ot, stride_od, stride_ps,
                               T, S, qk_scale, window, HEAD_DIM, BLOCK_M, BLOCK_N,
                               CAUSAL, HAS_WINDOW, HAS_PAD, True, USE_TMA)  # fmt: skip
    else:
        # the longest causal rows come last in a head: start with them so that no
        # long program is left running alone at the end
        pid_m = tl.program_id(0)
        if CAUSAL:
            pid_m = tl.num_programs(0) - 1 - pid_m
        _fwd_row_block(q_base, k_base, v_base, o_base, lse_row, pad_ptrs, K_DESC, V_DESC, b, h_kv, pid_m * BLOCK_M,
                       stride_qt, stride_qd, stride_ks, stride_kd, stride_vs, stride_vd, stride_ot, stride_od, stride_ps,
                       T, S, qk_scale, window, HEAD_DIM, BLOCK_M, BLOCK_N,
                       CAUSAL, HAS_WINDOW, HAS_PAD, False, USE_TMA)  # fmt: skip


# --- 2. the launcher -----------------------------------------------------------------------

TMA_HEAD_DIM = 128  # the head dim whose forward loads K and V through the TMA (see tma_descriptors)


def _tma_layout_ok(t: torch.Tensor) -> bool:
    """What the TMA needs of a tensor: rows of stride 1, a 16-byte aligned start and 16-byte multiple strides."""
    size = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(st > 0 and st * size % 16 == 0 for st in t.stride()[:-1])


def tma_descriptors(k: torch.Tensor, v: torch.Tensor) -> tuple[object, object] | None:
    """Descriptors of k and v (B, Hkv, S, D) for the kernel's TMA loads, or None where they cannot be used.

    The tensor memory accelerator of Hopper (compute capability 9.0) and newer GPUs copies a
    whole block from global to shared memory in one instruction: the kernel spends no
    registers and no instructions on the block's addresses, and the copy of the next block
    overlaps the math of this one. The descriptor records the tensor's shape and strides;
    the kernel asks for block (b, kv head, first key, 0).

    Measured on an H200 (``results/h200/flash_fwd_tma*``, ``attention_tma*``): the head-dim-128
    forward, whose (BLOCK_N, 128) blocks weigh on the registers the most, got 3-16% faster in
    most cases (one same-run A/B lost 12%, at T = 1024 causal); at head dim 64 the pointer
    loads were 1-5% faster, so only head dim 128 uses the TMA.

    None (the kernel's pointer loads) for other head dims, without a GPU of capability 9 or
    more, under the interpreter, with a Triton too old to have descriptors, or when a layout
    does not suit the TMA (a stride that is not a multiple of 16 bytes, a broadcast head).
    """
    if k.shape[-1] != TMA_HEAD_DIM or TensorDescriptor is None or is_interpreter() or not k.is_cuda:
        return None
    if compute_capability(k.device)[0] < 9 or not (_tma_layout_ok(k) and _tma_layout_ok(v)):
        return None
    block = [1, 1, 16, k.shape[-1]]  # a placeholder: the autotuner's pre-hook sets each config's block
    return TensorDescriptor.from_tensor(k, block), TensorDescriptor.from_tensor(v, block)


def flash_attention_forward(q, k, v, *, causal=True, scale=None, window=None, key_padding_mask=None):
    """Run the forward kernel. Returns ``(o, lse)``: o (B, Hq, T, D) like q, lse (B, Hq, T) float32.

    Inputs may be any strided views (no copy is made). They are checked once, by :func:`attention`;
    call :func:`check_attention_inputs` first when calling this launcher directly.
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    o = heads_split_empty(B, Hq, T, D, like=q)  # stored (B, T, Hq, D): merging the heads is a view
    lse = torch.empty((B, Hq, T), device=q.device, dtype=torch.float32)
    if o.numel() == 0:
        return o, lse.fill_(float("-inf"))
    pad = key_padding_mask.view(torch.uint8) if key_padding_mask is not None else lse  # lse: a dummy pointer
    pad_strides = pad.stride() if key_padding_mask is not None else (0, 0)

    def grid(meta):
        return (cdiv(T, meta["BLOCK_M"]), B * Hq)

    descriptors = tma_descriptors(k, v)
    strides = (*q.stride(), *k.stride(), *v.stride(), *o.stride(), *pad_strides)
    rest = (Hq, T, S, scale * LOG2E, window or 0, seq_bucket(T), seq_bucket(S))
    flags = dict(GROUP=Hq // Hkv, HEAD_DIM=D, CAUSAL=bool(causal), HAS_WINDOW=window is not None,
                 HAS_PAD=key_padding_mask is not None)  # fmt: skip
    _flash_fwd_kernel[grid](q, k, v, o, lse, pad, *(descriptors or (None, None)), *strides, *rest,
                            **flags, REPAIR=False, USE_TMA=descriptors is not None)  # fmt: skip
    if causal or window is not None:  # rows marked NaN, computed again with the guard (see the kernel)
        rows, block = (REPAIR_ROWS_INTERPRETER, REPAIR_BLOCK_INTERPRETER) if is_interpreter() else (REPAIR_ROWS, REPAIR_BLOCK)
        _flash_fwd_kernel.fn[(cdiv(T, rows), B * Hq)](
            q, k, v, o, lse, pad, None, None, *strides, *rest,  # the rare repair: pointer loads
            **flags, REPAIR=True, REPAIR_ROWS=rows, BLOCK_M=block, BLOCK_N=block, num_warps=4, num_stages=1
        )  # fmt: skip
    return o, lse


# --- 3. autograd and the registered op ----------------------------------------------------


class FlashAttention(torch.autograd.Function):
    """Forward: the kernel above. Backward: the kernels of ``flash_attention_bwd.py``.

    Saved for the backward: q, k, v, o and the (B, Hq, T) float32 lse -- O(T) memory
    per head, never the (T, S) probabilities.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, window, key_padding_mask):
        o, lse = flash_attention_forward(q, k, v, causal=causal, scale=scale, window=window,
                                         key_padding_mask=key_padding_mask)  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
        ctx.causal, ctx.scale, ctx.window = causal, scale, window
        return o

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, do):
        q, k, v, o, lse, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(
            q, k, v, o, lse, do, causal=ctx.causal, scale=ctx.scale, window=ctx.window,
            key_padding_mask=key_padding_mask,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Backend "triton" of ``llm_course.ops.attention``: q (B, Hq, T, D); k, v (B, Hkv, S, D) -> (B, Hq, T, D).

    Differentiable (dQ, dK, dV in Triton). Dropout is not implemented in the kernel.
    """
    if dropout_p:
        raise NotImplementedError(f"{OP}: dropout_p={dropout_p} is not supported by the Triton kernel; use the torch backend")
    check_attention_inputs(q, k, v, scale=scale, window=window, key_padding_mask=key_padding_mask)
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.attention(q, k, v, bool(causal), scale, window, key_padding_mask)
    return FlashAttention.apply(q, k, v, bool(causal), scale, window, key_padding_mask)

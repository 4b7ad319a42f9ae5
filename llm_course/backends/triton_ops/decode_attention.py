"""Decode attention in Triton: "flash decoding", one query per sequence against a long KV cache.

During generation each step has ONE new query per head (T = 1) and S cached keys.
FlashAttention's forward (``flash_attention.py``) gives one program a block of
queries and walks over all the keys; with one query there is a single block per
head, so B * Hq programs would each read S keys one after the other while most
of the GPU's SMs stay idle (B = 1, Hq = 14: 14 programs on 132 SMs). The work is
all memory traffic -- every key and value is read once and used for a handful of
multiply-adds -- so what matters is to have the whole GPU reading at once.

Flash decoding (Dao, Haziza, Massa, Sizov, 2023) cuts the *keys* instead:

1. ``_decode_split_kernel``, grid (B * Hkv, num_splits): one program takes one kv
   head of one sequence and one *split*, a contiguous range of ``split_size`` cache
   slots, and runs the online softmax (notebook 02a) over it for the G = Hq / Hkv
   query heads that share that kv head. Each K and V tile is loaded once for the
   whole group: ``tl.dot`` of the (G, D) queries with the (BLOCK_N, D) keys.
   It writes a *partial* result per query head and split, in float32:

       m    the max of the scaled scores (base 2: scores times scale * log2(e))
       l    sum of exp2(score - m)
       acc  sum of exp2(score - m) * v                                    (D,)

2. ``_decode_combine_kernel``, grid (B * Hq,): merges the splits of one query
   head. The partials were summed under different maxima, so each is rescaled
   to the common max M = max_i m_i before they are added:

       out = sum_i 2^(m_i - M) acc_i / sum_i 2^(m_i - M) l_i

   With one split (enough programs already: a big batch) the first kernel writes
   the output itself and the second is not launched.

Which slots row b's query sees, with ``L = cache_seqlens[b]`` read by the kernels
from device memory: [max(L - window, 0), min(L, S_max)), minus the slots the padding
mask marks False. A split that lies entirely outside that range does no work: its
loop is empty, and the combine kernel, which computes the same ranges, never reads
its partials. So the number of splits depends on the shapes only (B, Hkv, S_max),
never on the lengths: nothing waits for the host, and a decode step can be
captured in a CUDA graph and replayed while ``cache_seqlens`` advances on the GPU.

Unseen slots never reach the output even when they hold NaN or inf: their keys and
values are loaded as 0 (a masked load), and their scores set to -inf. A row that
sees no slot gets 0.

Decode is inference: there is no backward kernel. When a gradient is asked for
(an input requires grad and grad mode is on), :func:`decode_attention` runs the
PyTorch reference (``torch_ops/decode_attention.py``) instead, which autograd can
differentiate; inference (``torch.no_grad()``, ``torch.inference_mode()``) always runs the kernels.

On a GPU the first call at a new shape tunes the split kernel's block of slots,
warps and pipeline stages (``triton.autotune``, keyed on the split size, head dim
and group): run one decode step eagerly before capturing it in a CUDA graph.
"""

from __future__ import annotations

import math

import torch

from llm_course.device import configure_triton, is_gpu, is_interpreter

configure_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_tensor, check_tensors  # noqa: E402
from llm_course.backends.triton_ops.launch import next_power_of_2, sm_count  # noqa: E402
from llm_course.device import autotune_configs  # noqa: E402

OP = "decode_attention"
MAX_HEAD_DIM = 256  # q, a K tile and a V tile of this width still fit in registers and shared memory
LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e))
MAX_SPLITS = 256  # the combine kernel holds the m and l of every split of a row at once
# split_plan aims at (PROGRAMS_PER_SM_D128 * 128 / D) programs of the split kernel per SM (on an H200:
# one per SM at D = 128, two at D = 64, the best of a sweep of split counts against SDPA) ...
PROGRAMS_PER_SM_D128 = 1
MIN_SPLIT = 128  # ... each with at least this many slots (a multiple of every BLOCK_N tried)

# --- 1. the kernels ------------------------------------------------------------------------------


@triton.jit
def visible_range(SEQLENS, b, S, window, HAS_WINDOW: tl.constexpr):
    """[lo, hi): the cache slots row b's query may see (before the padding mask), as int32."""
    seqlen = tl.load(SEQLENS + b).to(tl.int64)  # read on the device: no host synchronisation
    hi = tl.minimum(tl.maximum(seqlen, 0), S)  # the written slots (a length past S_max counts as S_max)
    lo = hi * 0
    if HAS_WINDOW:
        lo = tl.minimum(tl.maximum(seqlen - window, 0), hi)  # only the last `window` positions
    return lo.to(tl.int32), hi.to(tl.int32)


_SPLIT_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn, w, s in [(64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 4, 3), (32, 4, 4)]
    ],
    triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=1),
)


@triton.autotune(configs=_SPLIT_CONFIGS, key=["SPLIT_BUCKET", "BLOCK_D", "BLOCK_G", "HAS_PAD", "SINGLE"])
@triton.jit
def _decode_split_kernel(
    Q, K, V, SEQLENS, PAD, O, M, L, ACC,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_pb, stride_ps,
    stride_ob, stride_oh, stride_od,
    Hkv, S, D, split_size, n_splits, qk_scale, window,
    SPLIT_BUCKET,  # only for the autotuning key
    GROUP: tl.constexpr,  # query heads per kv head, Hq // Hkv
    BLOCK_G: tl.constexpr,  # GROUP rounded up to a power of two >= 16 (tl.dot's smallest tile)
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two >= 16
    EVEN_D: tl.constexpr,  # D == BLOCK_D: no mask on the feature axis
    BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
    SINGLE: tl.constexpr,  # one split: write the output here, no combine
):  # fmt: skip
    """One program: the G query heads of kv head ``h_kv`` of row ``b``, over the slots of one split.

    Writes, for each of those query heads, m and l (B * Hq, n_splits) and acc
    (B * Hq, n_splits, D) in float32; or, with SINGLE, the output O (B, Hq, 1, D).
    """
    pid_bh = tl.program_id(0)  # b * Hkv + h_kv
    split = tl.program_id(1)
    b = pid_bh // Hkv
    h_kv = pid_bh % Hkv

    # this split's slots, cut to the ones row b sees: an empty range does no work
    lo, hi = visible_range(SEQLENS, b, S, window, HAS_WINDOW)
    start = tl.maximum(split * split_size, lo)
    stop = tl.minimum(split * split_size + split_size, hi)

    offs_g = tl.arange(0, BLOCK_G)  # (BLOCK_G,) query heads of the group (GROUP of them are real)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) slot offsets within a block
    g_ok = offs_g < GROUP
    d_ok = offs_d < D
    heads = h_kv * GROUP + offs_g  # (BLOCK_G,) query head h reads kv head h // GROUP

    # 64-bit offsets: B * Hkv * S_max * D can exceed 2**31
    q_ptrs = Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=g_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_G, BLOCK_D), kept in registers
    k_ptrs = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd
    v_ptrs = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
    pad_ptrs = PAD + b.to(tl.int64) * stride_pb  # row b of the padding mask (unused without one)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)

    for n0 in range(start, stop, BLOCK_N):
        slots = n0 + offs_n  # (BLOCK_N,) cache positions
        seen = slots < stop
        if HAS_PAD:
            seen = seen & (tl.load(pad_ptrs + slots * stride_ps, mask=seen, other=0) != 0)
        if EVEN_D:
            k_mask = (slots < stop)[:, None]
            v_mask = seen[:, None]
        else:
            k_mask = (slots < stop)[:, None] & d_ok[None, :]
            v_mask = seen[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs + n0 * stride_ks, mask=k_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        qk = tl.dot(q, tl.trans(k))  # (BLOCK_G, BLOCK_N) raw scores q . k
        qk = tl.where(seen[None, :], qk, float("-inf"))  # padding slots: nothing (their k may be NaN)
        # online softmax in base 2 (scale > 0, so the max of the raw scores times it is the max)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: subtract 0, no NaN
        p = tl.exp2(qk * qk_scale - m_sub[:, None])  # (BLOCK_G, BLOCK_N)
        alpha = tl.exp2(m_i - m_sub)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs + n0 * stride_vs, mask=v_mask, other=0.0)  # unseen values read as 0: 0 * NaN would be NaN
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # P in the input dtype, accumulated in fp32
        m_i = m_new

    if SINGLE:  # the only split: normalise and write the output; a row that saw nothing gets 0
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        o_ptrs = O + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :] * stride_od
        tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
    else:  # a partial result per query head; empty splits write nothing (the combine skips them)
        part = (pid_bh * GROUP + offs_g).to(tl.int64) * n_splits + split  # (BLOCK_G,) row b * Hq + h, this split
        keep = g_ok & (start < stop)
        tl.store(M + part, m_i, mask=keep)
        tl.store(L + part, l_i, mask=keep)
        tl.store(ACC + part[:, None] * D + offs_d[None, :], acc, mask=keep[:, None] & d_ok[None, :])


@triton.jit
def _decode_combine_kernel(
    M, L, ACC, SEQLENS, O,
    stride_ob, stride_oh, stride_od,
    Hq, S, D, split_size, n_splits, window,
    HAS_WINDOW: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """One program: query head ``h`` of row ``b``. Merges its splits' (m, l, acc) into the output."""
    row = tl.program_id(0)  # b * Hq + h
    b = row // Hq
    h = row % Hq
    lo, hi = visible_range(SEQLENS, b, S, window, HAS_WINDOW)
    base = row.to(tl.int64) * n_splits

    # the splits that saw work (the others wrote nothing: never read them)
    offs_s = tl.arange(0, BLOCK_S)
    ran = (offs_s < n_splits) & (tl.maximum(offs_s * split_size, lo) < tl.minimum(offs_s * split_size + split_size, hi))
    m = tl.load(M + base + offs_s, mask=ran, other=float("-inf"))  # (BLOCK_S,)
    l = tl.load(L + base + offs_s, mask=ran, other=0.0)
    m_max = tl.max(m, 0)  # the common max of all splits
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # no split saw a key: weights 0, not NaN
    l_total = tl.sum(tl.exp2(m - m_max) * l, 0)  # each split's sum rescaled to the common max

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    first = lo // split_size  # the splits that hold [lo, hi)
    last = (hi + split_size - 1) // split_size
    for s0 in range(first, last, CHUNK):  # the acc of CHUNK splits at a time: (CHUNK, D) in registers
        offs_c = s0 + tl.arange(0, CHUNK)
        ran_c = (offs_c < n_splits) & (tl.maximum(offs_c * split_size, lo) < tl.minimum(offs_c * split_size + split_size, hi))
        m_c = tl.load(M + base + offs_c, mask=ran_c, other=float("-inf"))
        a = tl.load(ACC + (base + offs_c)[:, None] * D + offs_d[None, :], mask=ran_c[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(tl.exp2(m_c - m_max)[:, None] * a, 0)  # (BLOCK_D,)

    o = acc / tl.where(l_total > 0.0, l_total, 1.0)
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_d * stride_od
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=d_ok)


# --- 2. the launcher -------------------------------------------------------------------------------


def split_plan(B: int, Hkv: int, S: int, device: torch.device, D: int = 128) -> tuple[int, int]:
    """``(num_splits, split_size)`` from the shapes alone (never the lengths, so a graph can be captured).

    About one wave of programs in all (one per SM at D = 128, two at D = 64: a smaller
    head moves fewer bytes per program), so that every SM reads and none waits for a
    second, partly empty wave; the count is rounded to the nearest whole number of splits. But at
    least ``MIN_SPLIT`` slots a program, so that each one streams enough bytes to
    be worth its start-up and the partial results stay small next to the cache.
    Split sizes are multiples of 64 slots (of 16 in the interpreter, where tests
    use short caches).
    """
    if is_interpreter() or not is_gpu(device):
        target, min_split, align = 8, 32, 16
    else:
        per_sm = max(1, PROGRAMS_PER_SM_D128 * 128 // max(16, next_power_of_2(D)))
        target, min_split, align = per_sm * sm_count(device), MIN_SPLIT, 64
    splits = max(1, min(MAX_SPLITS, round(target / max(1, B * Hkv))))  # target / programs per split, rounded
    split_size = max(min_split, -(-S // splits))
    split_size = -(-split_size // align) * align
    return max(1, -(-S // split_size)), split_size


def check_decode_inputs(q, k_cache, v_cache, cache_seqlens, *, scale=None, window=None, key_padding_mask=None) -> None:
    """The op's check (``checks.decode_attention``: shapes, one device and dtype, the options), then what the kernels need."""
    contract.decode_attention(q, k_cache, v_cache, cache_seqlens, scale=scale, window=window, key_padding_mask=key_padding_mask)
    check_tensors(OP, q=q, k_cache=k_cache, v_cache=v_cache)  # a device Triton runs on, a dtype the kernels support
    check_tensor(OP, "cache_seqlens", cache_seqlens, dtypes=(torch.int32, torch.int64))
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"{OP}: head dim {q.shape[-1]} is too large for the kernel (at most {MAX_HEAD_DIM})")


def decode_attention_forward(q, k_cache, v_cache, cache_seqlens, *, scale=None, window=None,
                             key_padding_mask=None, num_splits=None):  # fmt: skip
    """Run the kernels. q (B, Hq, 1, D); caches (B, Hkv, S_max, D) -> (B, Hq, 1, D) in q's dtype.

    Inputs may be strided views (no copy). ``num_splits`` overrides :func:`split_plan`
    (for tests and benchmarks). Checked by :func:`decode_attention`; call
    :func:`check_decode_inputs` first when calling this directly.
    """
    B, Hq, _, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    o = torch.empty((B, Hq, 1, D), device=q.device, dtype=q.dtype)
    if o.numel() == 0:
        return o
    if S == 0:
        return o.zero_()
    if num_splits is None:
        num_splits, split_size = split_plan(B, Hkv, S, q.device, D)
    else:
        num_splits = max(1, min(int(num_splits), S, MAX_SPLITS))
        split_size = -(-S // num_splits)
        num_splits = -(-S // split_size)
    single = num_splits == 1
    block_d = max(16, next_power_of_2(D))
    pad = key_padding_mask.view(torch.uint8) if key_padding_mask is not None else cache_seqlens  # a dummy pointer
    pad_strides = pad.stride() if key_padding_mask is not None else (0, 0)
    if single:
        m = l = acc = o  # not touched
    else:
        m = torch.empty((B * Hq, num_splits), device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
        acc = torch.empty((B * Hq, num_splits, D), device=q.device, dtype=torch.float32)
    o_strides = (o.stride(0), o.stride(1), o.stride(3))
    _decode_split_kernel[(B * Hkv, num_splits)](
        q, k_cache, v_cache, cache_seqlens, pad, o, m, l, acc,
        q.stride(0), q.stride(1), q.stride(3), *k_cache.stride(), *v_cache.stride(), *pad_strides, *o_strides,
        Hkv, S, D, split_size, num_splits, scale * LOG2E, window or 0,
        next_power_of_2(split_size),
        GROUP=G, BLOCK_G=max(16, next_power_of_2(G)), BLOCK_D=block_d, EVEN_D=block_d == D,
        HAS_WINDOW=window is not None, HAS_PAD=key_padding_mask is not None, SINGLE=single,
    )  # fmt: skip
    if not single:
        block_s = next_power_of_2(num_splits)
        # splits merged per iteration: 4096 numbers of acc in registers (4 in the interpreter, so that
        # the tests' short caches still take several iterations)
        chunk = 4 if is_interpreter() else max(2, min(block_s, 4096 // block_d))
        _decode_combine_kernel[(B * Hq,)](
            m, l, acc, cache_seqlens, o, *o_strides,
            Hq, S, D, split_size, num_splits, window or 0,
            HAS_WINDOW=window is not None, BLOCK_S=block_s, BLOCK_D=block_d,
            CHUNK=chunk, num_warps=4,
        )  # fmt: skip
    return o


# --- 3. the registered op ---------------------------------------------------------------------------


@checks_own_inputs  # llm_course.ops does not check again what check_decode_inputs does here
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backend "triton" of ``llm_course.ops.decode_attention``: q (B, Hq, 1, D) -> (B, Hq, 1, D).

    Forward only: when a gradient is asked for, the PyTorch reference runs instead (see the module's docstring).
    """
    check_decode_inputs(q, k_cache, v_cache, cache_seqlens, scale=scale, window=window, key_padding_mask=key_padding_mask)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache)):
        from llm_course.backends.torch_ops.decode_attention import decode_attention as reference

        return reference(q, k_cache, v_cache, cache_seqlens, scale=scale, window=window, key_padding_mask=key_padding_mask)
    return decode_attention_forward(q, k_cache, v_cache, cache_seqlens, scale=scale, window=window,
                                    key_padding_mask=key_padding_mask)  # fmt: skip

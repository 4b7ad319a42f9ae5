"""Graded tests of stage 3: decode attention, flash decoding (exercises/stage3_models/decode_attention.py).

The split kernel is graded through its launcher ``decode_split`` on its own: per
split, the partial results must give the split's own softmax output (acc / l)
and log-sum-exp (m + log l), which do not depend on which max was subtracted;
an empty split must write l = 0, acc = 0, m = -inf. The combine kernel is graded
through ``decode_combine`` on partials made here, with very different maxima
per split. Then both together, through ``decode_attention_forward`` and
``decode_attention`` (the signature of ``llm_course.ops.decode_attention``),
against a float64 softmax written out here.

Each test aims at one usual mistake and names it when the result is wrong
exactly the way that mistake makes it: splits added without rescaling by
exp(m_i - M), the cache's unfilled slots read (cache_seqlens ignored), query
head h paired with kv head h % Hkv instead of h // G, the scale left out.
Inputs and outputs lie inside larger buffers filled with a sentinel, so a stray
store is caught; in the interpreter, memcheck names a stray load or store
before it happens.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close, assert_guards_intact, guarded, guarded_empty, which_mistake
from llm_course.grading.memcheck import memcheck

TOPIC = "stage3_models/decode_attention"
BLOCK = dict(block_n=16)

decode_exercise = pytest.mark.exercise("decode_attention", stage=3, points=3, title="Flash decoding: split-K decode attention kernels")

NO_RESCALE = ("the splits are added without rescaling: each split summed exp(s - m_i) under its own max m_i, so before "
              "adding them multiply each split's acc and l by w_i = exp(m_i - M), M the max over the splits.")  # fmt: skip
SEQLENS_IGNORED = ("the output is attention over every slot of the cache, the unfilled ones included: stop each split "
                   "at min(its end, cache_seqlens[b]), and mask the loads to slots < stop.")  # fmt: skip
GQA_MODULO = ("query head h is paired with kv head h % Hkv: the query heads that share kv head h_kv are h_kv * G .. "
              "h_kv * G + G - 1 (kv head = h // G, with G = Hq // Hkv).")  # fmt: skip
NO_SCALE = "the scores are not scaled: multiply q . k by scale (the launcher passes 1/sqrt(D) when scale is None)."


@pytest.fixture(autouse=True)
def _memcheck():
    """In the interpreter: a load or store outside the kernel's tensors fails, named, before it happens."""
    with memcheck(hint="mask the loads to the filled slots of the split (< stop) and the query rows to g < GROUP."):
        yield


def _tol(dtype):
    if dtype == torch.float16:
        return dict(atol=2e-3, rtol=2e-3)
    return dict(atol=1e-2, rtol=1e-2) if has_gpu() else dict(atol=1e-5, rtol=1e-5)


def _case(rng, B, Hq, Hkv, S, D, seqlens, dtype=torch.float32, unfilled=float("nan")):
    """q, k_cache, v_cache (unfilled slots set to ``unfilled``) and cache_seqlens (int32) on the device."""
    dev = get_device()
    q = torch.randn(B, Hq, 1, D, generator=rng)
    k = torch.randn(B, Hkv, S, D, generator=rng)
    v = torch.randn(B, Hkv, S, D, generator=rng)
    lengths = torch.tensor(seqlens, dtype=torch.int32)
    filled = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    if unfilled == "random":  # finite values, far from the filled ones: reading them changes the output a lot
        junk_k, junk_v = 3 * torch.randn(B, Hkv, S, D, generator=rng), 5 + torch.randn(B, Hkv, S, D, generator=rng)
    else:
        junk_k = junk_v = torch.full((B, Hkv, S, D), unfilled)
    k = torch.where(filled[:, None, :, None], k, junk_k)
    v = torch.where(filled[:, None, :, None], v, junk_v)
    return q.to(dtype).to(dev), k.to(dtype).to(dev), v.to(dtype).to(dev), lengths.to(dev)


def _reference(q, k, v, seqlens, scale=None, *, kv_head=None, use_seqlens=True):
    """float64 attention of each query over its row's filled slots, on the CPU: (B, Hq, 1, D).

    ``kv_head(h, Hq, Hkv)`` picks the kv head of query head h (default h // G);
    ``use_seqlens=False`` attends to every slot (a mistake).
    """
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    B, Hq, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kv_head = kv_head or (lambda h, Hq, Hkv: h // (Hq // Hkv))
    out = torch.zeros(B, Hq, 1, D, dtype=torch.float64)
    for b in range(B):
        n = min(int(seqlens[b]), S) if use_seqlens else S
        for h in range(Hq):
            if n <= 0:
                continue
            hk = kv_head(h, Hq, Hkv)
            s = (k[b, hk, :n] @ q[b, h, 0]) * scale  # (n,)
            out[b, h, 0] = torch.softmax(s, 0) @ v[b, hk, :n]
    return out


def _forward(mod, q, k, v, seqlens, *, num_splits, scale=None):
    """``decode_attention_forward`` on guarded inputs, into a guarded output."""
    q, k, v = guarded(q, "q"), guarded(k, "k_cache"), guarded(v, "v_cache")
    seqlens = guarded(seqlens, "cache_seqlens", fill=0)
    out = guarded_empty(q.shape, q.dtype, q.device, name="out")
    got = mod.decode_attention_forward(q, k, v, seqlens, scale=scale, num_splits=num_splits, out=out, **BLOCK)
    assert got is out, "decode_attention_forward must return the out it was given to fill."
    assert_guards_intact(out, hint="store only the D features of each (row, query head) into out.")
    return out


def _check(got, ref, hint, mistakes=(), dtype=torch.float32):
    tol = _tol(dtype)
    mistake = which_mistake(got, ref, mistakes, **tol)
    if mistake:
        raise AssertionError(mistake)
    assert_close(got, ref, hint=hint, **tol)


# --- the split kernel on its own ----------------------------------------------------------------


@decode_exercise
def test_split_kernel_partials(impl, rng):
    """Per split: acc / l is the split's softmax output, m + log(l) its log-sum-exp; an empty split writes nothing but l = 0."""
    mod = impl.load(TOPIC)
    B, Hq, Hkv, S, D, n = 3, 4, 2, 45, 16, 3  # splits of 15 slots; row lengths cut them in the middle, or leave them empty
    seqlens = [45, 20, 7]
    q, k, v, lengths = _case(rng, B, Hq, Hkv, S, D, seqlens)
    m = guarded_empty((B, Hq, n), name="m")
    l = guarded_empty((B, Hq, n), name="l")
    acc = guarded_empty((B, Hq, n, D), name="acc")
    got = mod.decode_split(guarded(q, "q"), guarded(k, "k_cache"), guarded(v, "v_cache"), lengths, num_splits=n,
                           m=m, l=l, acc=acc, **BLOCK)  # fmt: skip
    assert isinstance(got, tuple) and len(got) == 3 and all(a is b for a, b in zip(got, (m, l, acc))), (
        "decode_split must return the (m, l, acc) it was given to fill.")  # fmt: skip
    assert_guards_intact(m, l, acc, hint="store m, l and acc only for the GROUP real query heads (mask g < GROUP).")
    q64, k64, v64 = (t.double().cpu() for t in (q, k, v))
    scale, size = 1.0 / math.sqrt(D), 15
    for b in range(B):
        for h in range(Hq):
            for i in range(n):
                lo, hi = i * size, min((i + 1) * size, seqlens[b])
                where = f"row b={b} (cache_seqlens {seqlens[b]}), query head {h}, split {i} (slots {lo}..{(i + 1) * size - 1})"
                if hi <= lo:
                    assert l[b, h, i].item() == 0 and not acc[b, h, i].any() and m[b, h, i].item() == float("-inf"), (
                        f"{where} has no filled slot: it must write m = -inf, l = 0, acc = 0, got m = {m[b, h, i].item():g}, "
                        f"l = {l[b, h, i].item():g}; stop the split at min(its end, cache_seqlens[b]).")  # fmt: skip
                    continue
                s = (k64[b, h // 2, lo:hi] @ q64[b, h, 0]) * scale
                out_ref, lse_ref = torch.softmax(s, 0) @ v64[b, h // 2, lo:hi], torch.logsumexp(s, 0)
                lse = (m[b, h, i].double() + torch.log(l[b, h, i].double())).cpu()
                assert_close(lse, lse_ref, what=f"m + log(l) at {where}", **_tol(q.dtype),
                             hint="m + log(l) of a split is not the log-sum-exp of its scaled scores: m is the max of scale * q . k over the split's filled slots, l the sum of exp(s - m).")  # fmt: skip
                assert_close((acc[b, h, i] / l[b, h, i]).cpu(), out_ref, what=f"acc / l at {where}", **_tol(q.dtype),
                             hint="acc / l of a split is not the softmax-weighted sum of its values: rescale acc by alpha = exp(m_old - m_new) when the running max rises, and add p @ v.")  # fmt: skip


# --- the combine kernel on its own --------------------------------------------------------------


def _partials(rng, B, Hq, n, D, empty=()):
    """Partial results of n splits with very different maxima (m in [-20, 20]); ``empty``: (b, h, i) of empty splits."""
    m = torch.empty(B, Hq, n, dtype=torch.float64).uniform_(-20, 20, generator=rng)
    l = torch.empty(B, Hq, n, dtype=torch.float64).uniform_(0.5, 10, generator=rng)
    acc = torch.randn(B, Hq, n, D, generator=rng, dtype=torch.float64) * l[..., None]
    for b, h, i in empty:
        m[b, h, i], l[b, h, i], acc[b, h, i] = float("-inf"), 0.0, 0.0
    return m, l, acc


def _combine_reference(m, l, acc):
    mx = m.amax(-1, keepdim=True)
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    w = torch.exp(m - mx)  # (B, Hq, n)
    tot = (w * l).sum(-1, keepdim=True)
    out = (w[..., None] * acc).sum(-2) / torch.where(tot > 0, tot, torch.ones_like(tot))
    return out[:, :, None, :]  # (B, Hq, 1, D)


@decode_exercise
@pytest.mark.parametrize("n", [1, 5])
def test_combine_kernel_rescales_each_split(impl, rng, n):
    mod = impl.load(TOPIC)
    B, Hq, D = 2, 3, 16
    m, l, acc = _partials(rng, B, Hq, n, D, empty=[(1, 2, n - 1)] if n > 1 else [])
    dev = get_device()
    out = guarded_empty((B, Hq, 1, D), name="out")
    got = mod.decode_combine(*(guarded(t.float().to(dev), name) for t, name in ((m, "m"), (l, "l"), (acc, "acc"))), out=out)
    assert got is out, "decode_combine must return the out it was given to fill."
    assert_guards_intact(out, hint="store one (D,) row per program, at row * D + d.")
    plain = (acc.sum(-2) / l.sum(-1, keepdim=True))[:, :, None, :]  # the mistake: no rescaling
    _check(out, _combine_reference(m, l, acc), f"Combining {n} splits is wrong: M = max_i m_i, w_i = exp(m_i - M), out = sum_i w_i acc_i / sum_i w_i l_i (an empty split has m = -inf, so w = 0).",
           mistakes=[(plain, NO_RESCALE)])  # fmt: skip


@decode_exercise
def test_combine_kernel_row_with_no_slot_gives_zero(impl, rng):
    mod = impl.load(TOPIC)
    B, Hq, n, D = 2, 2, 4, 16
    m, l, acc = _partials(rng, B, Hq, n, D, empty=[(0, h, i) for h in range(Hq) for i in range(n)])
    dev = get_device()
    out = mod.decode_combine(m.float().to(dev), l.float().to(dev), acc.float().to(dev))
    assert torch.isfinite(out).all(), ("A row whose splits are all empty (m = -inf everywhere) gives NaN: exp(-inf - (-inf)) is NaN; "
                                       "use 0 for the max when it is -inf, and divide by 1 where sum(w * l) is 0, so that the output is 0.")  # fmt: skip
    _check(out, _combine_reference(m, l, acc), "A row with no filled slot must give 0, and the other rows their combined output.")


# --- both kernels --------------------------------------------------------------------------------


@decode_exercise
def test_one_split_one_block(impl, rng):
    mod = impl.load(TOPIC)
    q, k, v, lengths = _case(rng, 1, 2, 2, 16, 16, [16])
    out = _forward(mod, q, k, v, lengths, num_splits=1)
    _check(out, _reference(q, k, v, [16]), "One row, 16 filled slots, one split of one block: check the offsets of q, k, v, the scores and the softmax.")


@decode_exercise
def test_cache_seqlens_stop_each_row(impl, rng):
    """Rows of different lengths (0, full, cut inside a block and a split); the unfilled slots hold other numbers."""
    mod = impl.load(TOPIC)
    seqlens = [37, 0, 50, 9]
    q, k, v, lengths = _case(rng, 4, 4, 2, 50, 16, seqlens, unfilled="random")
    out = _forward(mod, q, k, v, lengths, num_splits=3)
    ref = _reference(q, k, v, seqlens)
    every_slot = _reference(q, k, v, seqlens, use_seqlens=False)
    _check(out, ref, f"With cache_seqlens = {seqlens} (S_max = 50, 3 splits) the output is wrong: each row sees only its slots j < cache_seqlens[b]; a row with none gives 0.",
           mistakes=[(every_slot, SEQLENS_IGNORED)])  # fmt: skip


@decode_exercise
def test_unfilled_slots_holding_nan_never_reach_the_output(impl, rng):
    mod = impl.load(TOPIC)
    seqlens = [21, 5]
    q, k, v, lengths = _case(rng, 2, 2, 1, 40, 16, seqlens, unfilled=float("nan"))
    out = _forward(mod, q, k, v, lengths, num_splits=2)
    assert torch.isfinite(out).all(), ("The unfilled slots of the cache hold NaN here and it reached the output: "
                                       "never load a slot >= cache_seqlens[b] (mask the loads, other=0) and set its score to -inf.")  # fmt: skip
    _check(out, _reference(q, k, v, seqlens), "With NaN in the unfilled slots the output is wrong.")


@decode_exercise
@pytest.mark.parametrize("Hq, Hkv", [(8, 2), (14, 2)])
def test_grouped_query_heads(impl, rng, Hq, Hkv):
    mod = impl.load(TOPIC)
    seqlens = [33, 18]
    q, k, v, lengths = _case(rng, 2, Hq, Hkv, 40, 16, seqlens)
    out = _forward(mod, q, k, v, lengths, num_splits=2)
    modulo = _reference(q, k, v, seqlens, kv_head=lambda h, Hq, Hkv: h % Hkv)
    _check(out, _reference(q, k, v, seqlens), f"With {Hq} query heads sharing {Hkv} kv heads (G = {Hq // Hkv}) the output is wrong: program (b, h_kv) handles query heads h_kv * G + g for g < G, masked to g < GROUP in a tile of BLOCK_G rows.",
           mistakes=[(modulo, GQA_MODULO)])  # fmt: skip


@decode_exercise
def test_scale(impl, rng):
    mod = impl.load(TOPIC)
    seqlens = [30]
    q, k, v, lengths = _case(rng, 1, 2, 2, 30, 64, seqlens)
    no_scale = _reference(q, k, v, seqlens, scale=1.0)
    out = _forward(mod, q, k, v, lengths, num_splits=2)
    _check(out, _reference(q, k, v, seqlens), "With the default scale (1/sqrt(64)) the output is wrong.", mistakes=[(no_scale, NO_SCALE)])
    out = _forward(mod, q, k, v, lengths, num_splits=2, scale=0.3)
    _check(out, _reference(q, k, v, seqlens, scale=0.3), "With scale = 0.3 the output is wrong: the scores are scale * q . k.",
           mistakes=[(no_scale, NO_SCALE)])  # fmt: skip


@decode_exercise
def test_float16_head_dim_64(impl, rng):
    mod = impl.load(TOPIC)
    seqlens = [47, 12]
    q, k, v, lengths = _case(rng, 2, 4, 2, 47, 64, seqlens, dtype=torch.float16)
    out = _forward(mod, q, k, v, lengths, num_splits=3)
    assert out.dtype == torch.float16
    _check(out, _reference(q, k, v, seqlens), "float16 inputs with D = 64: keep m, l and acc in float32, cast p to v's dtype for tl.dot, and store the output in its own dtype.",
           dtype=torch.float16)  # fmt: skip


@decode_exercise
def test_through_the_decode_attention_op(impl, rng):
    """``decode_attention`` (ops.decode_attention's signature): the default number of splits, int64 lengths."""
    mod = impl.load(TOPIC)
    seqlens = [70, 1, 44]
    q, k, v, lengths = _case(rng, 3, 6, 3, 70, 32, seqlens)
    out = mod.decode_attention(q, k, v, lengths.long())
    _check(out, _reference(q, k, v, seqlens), "decode_attention(q, k_cache, v_cache, cache_seqlens) with 6 query heads sharing 3 kv heads, S_max = 70 is wrong; the tests above name the kernels' mistake.")

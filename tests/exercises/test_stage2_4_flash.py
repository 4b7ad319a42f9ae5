"""Graded tests of stage 2: FlashAttention (exercises/stage2_attention/flash_attention.py).

``flash_forward``: the Triton forward kernel, through the given launcher, against
a float64 reference of the output and of the log-sum-exp.
``flash_backward_dkdv`` and ``flash_backward_dq``: the two backward kernels, each
through its own launcher and fed the float64 reference's lse and delta (so that
each is graded on its own, whatever the state of the others), against float64
autograd; then the three kernels together through ``attention``, the exercise's
version of ``llm_course.ops.attention``.

Each test aims at one usual mistake and says which in its message: a missing
rescale of the accumulator, an off-by-one causal mask, causal alignment when
T < S, unmasked tails (T, S not multiples of the block), the wrong scale, a
wrong lse, a backward without the delta term (recognised, and named, only when
the gradient is wrong exactly the way that mistake makes it). Every input and
output lies inside a larger buffer filled with a sentinel, so a load or store
past the end stays in memory the test owns; in the interpreter, memcheck names a
stray load or store (which pointer, which program) before it happens.

Block sizes are fixed (16) where a test depends on them, so that the lengths
below straddle block edges.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.device import get_device, has_gpu, is_interpreter
from llm_course.grading.checks import assert_close, assert_guards_intact, guarded, guarded_empty, which_mistake
from llm_course.grading.memcheck import memcheck, memcheck_status

TOPIC = "stage2_attention/flash_attention"
BLOCKS = dict(block_m=16, block_n=16)

forward_exercise = pytest.mark.exercise("flash_forward", stage=2, points=5, title="FlashAttention forward kernel")
dkdv_exercise = pytest.mark.exercise("flash_backward_dkdv", stage=2, points=4, title="FlashAttention backward: dK, dV kernel")
dq_exercise = pytest.mark.exercise("flash_backward_dq", stage=2, points=3, title="FlashAttention backward: dQ kernel")


def _rand(rng, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=rng) * scale).to(dtype).to(get_device())


def _qkv(rng, B, H, T, S, D, dtype=torch.float32, scale=1.0, Hkv=None):
    Hkv = Hkv or H
    return (_rand(rng, B, H, T, D, dtype=dtype, scale=scale), _rand(rng, B, Hkv, S, D, dtype=dtype, scale=scale),
            _rand(rng, B, Hkv, S, D, dtype=dtype))  # fmt: skip


@pytest.fixture(autouse=True)
def _memcheck():
    """In the interpreter: a load or store outside the kernel's tensors fails, named, before it happens."""
    with memcheck(hint="mask the loads and stores of rows to < T and of keys to < S."):
        yield


# --- references ----------------------------------------------------------------------------------


def _scores(q, k, causal, scale):
    """float64 scale * q k^T (B, H, T, S) with the causal future at -inf."""
    T, S = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        future = torch.arange(S)[None, :] > torch.arange(T)[:, None] + (S - T)
        s = s.masked_fill(future, float("-inf"))
    return s


def _reference(q, k, v, causal, scale=None):
    """float64 output (B, H, T, D), lse (B, H, T), and the autograd leaves, on the CPU."""
    q, k, v = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
    s = _scores(q, k, causal, scale)
    lse = torch.logsumexp(s, dim=-1)
    o = torch.exp(s - lse[..., None]) @ v
    return o, lse, (q, k, v)


class _Backward:
    """Everything a backward test compares with, in float64 on the CPU."""

    def __init__(self, q, k, v, do, causal, scale):
        scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
        o, lse, leaves = _reference(q, k, v, causal, scale)
        do64 = do.detach().double().cpu()
        o.backward(do64)
        self.o, self.lse = o.detach(), lse.detach()
        self.delta = (do64 * self.o).sum(-1)  # rowsum(dO * O)
        self.dq, self.dk, self.dv = (t.grad for t in leaves)
        # the gradients of the usual mistake: dS = P * dP, without "- delta"
        q64, k64, v64 = (t.detach() for t in leaves)
        p = torch.exp(_scores(q64, k64, causal, scale) - self.lse[..., None])
        ds = p * (do64 @ v64.transpose(-1, -2))
        self.dq_no_delta = scale * ds @ k64
        self.dk_no_delta = scale * ds.transpose(-1, -2) @ q64


def _grad_tol(dtype):
    if dtype == torch.float16:
        return dict(atol=1e-2, rtol=1e-2)
    return dict(atol=1e-2, rtol=1e-2) if has_gpu() else dict(atol=1e-4, rtol=1e-4)


def _check_grad(name, got, ref, no_delta, hint, tol):
    """``got`` against ``ref``; a gradient that looks like the no-delta mistake gets its own sentence."""
    no_delta_sentence = (
        f"{name} is wrong the way it is when dS = P * dP without subtracting delta = rowsum(dO * O): "
        "use ds = p * (dp - delta[:, None]), with the delta of each query row loaded next to its lse."
    )
    mistake = which_mistake(got, ref, [(no_delta, no_delta_sentence)], **tol)
    if mistake:
        raise AssertionError(mistake)
    assert_close(got, ref, what=name, hint=hint, **tol)


def _tol(dtype):
    """Output tolerance: float32 in the interpreter is near-exact; tl.dot on a GPU rounds fp32 to TF32."""
    if dtype == torch.float16:
        return dict(atol=3e-3, rtol=3e-3)
    return dict(atol=1e-2, rtol=1e-2) if has_gpu() else dict(atol=1e-5, rtol=1e-5)


# --- flash_forward ----------------------------------------------------------------------


def _forward(mod, q, k, v, causal, scale=None):
    """The launcher, with guarded inputs and outputs."""
    B, H, T, D = q.shape
    q, k, v = (guarded(t, name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    o = guarded_empty(q.shape, q.dtype, q.device, name="o")
    lse = guarded_empty((B, H, T), torch.float32, q.device, name="lse")
    got_o, got_lse = mod.flash_attention_forward(q, k, v, causal=causal, scale=scale, o=o, lse=lse, **BLOCKS)
    assert got_o is o and got_lse is lse, "flash_attention_forward must return the o and lse it was given to fill."
    assert_guards_intact(o, lse, q, k, v, hint="mask the stores of o and lse to rows < T.")
    return o, lse


def _check_forward(mod, q, k, v, causal, hint, scale=None):
    o, lse = _forward(mod, q, k, v, causal, scale)
    ref_o, ref_lse, _ = _reference(q, k, v, causal, scale)
    assert_close(o, ref_o, hint=hint, **_tol(q.dtype))
    assert_close(lse, ref_lse, what="the lse", **(_tol(q.dtype) if has_gpu() else dict(atol=1e-4, rtol=1e-4)),
                 hint="The output is right but lse is wrong: store lse = m_i + log(l_i) (natural log, of the scaled scores) for each row < T.")  # fmt: skip


@forward_exercise
def test_forward_one_block(impl, rng):
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 1, 2, 16, 16, 16)
    _check_forward(mod, q, k, v, False, "A single 16x16 block is wrong: check the offsets of the q, k, v tiles, the scores tl.dot(q, tl.trans(k)) * scale and the softmax.")


@forward_exercise
def test_forward_several_key_blocks_rescale(impl, rng):
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 1, 2, 16, 64, 16)
    k = k * torch.linspace(0.2, 3.0, 64, device=k.device).view(1, 1, 64, 1)  # later blocks raise the running max
    _check_forward(mod, q, k, v, False, "With several key blocks whose scores keep growing the output is wrong: when the running max rises, rescale l_i and acc by alpha = exp(m_old - m_new) before adding the new block.")


@forward_exercise
def test_forward_large_scores(impl, rng):
    mod = impl.load(TOPIC)
    # Integer entries: the scores (up to a few hundred, where exp() overflows float32
    # unless the running max is subtracted) are exact even in a GPU's TF32 tl.dot.
    q, k = (torch.randint(-6, 7, (1, 2, n, 16), generator=rng).float().to(get_device()) for n in (32, 48))
    v = _rand(rng, 1, 2, 48, 16)
    o, lse = _forward(mod, q, k, v, False, scale=1.0)
    assert torch.isfinite(o).all(), "Large scores give inf/NaN: subtract the running max before exp (p = exp(s - m_new))."
    ref_o, ref_lse, _ = _reference(q, k, v, False, scale=1.0)
    assert_close(o, ref_o, atol=1e-3, rtol=1e-3, hint="With large scores the output is wrong: compute p = exp(s - m_new) and alpha = exp(m_old - m_new) with the running max.")
    assert_close(lse, ref_lse, what="the lse", atol=1e-3, rtol=1e-4, hint="With large scores lse is wrong: lse = m_i + log(l_i), where l_i sums exp(s - m_i).")


@forward_exercise
@pytest.mark.parametrize("T, S", [(37, 37), (21, 50), (50, 9)])
def test_forward_ragged_lengths(impl, rng, T, S):
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 2, 2, T, S, 32)
    _check_forward(mod, q, k, v, False, f"With T = {T}, S = {S} (not multiples of the block size 16) the output is wrong: mask the loads to rows < T and keys < S, set the scores of keys >= S to -inf, and mask the stores.")


@forward_exercise
def test_forward_causal(impl, rng):
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 1, 2, 37, 37, 16)
    _check_forward(mod, q, k, v, True, "The causal output is wrong: query i sees keys j <= i (its own position included) when T == S; set the scores of later keys to -inf.")


@forward_exercise
@pytest.mark.parametrize("T, S", [(5, 67), (20, 41)])
def test_forward_causal_fewer_queries_than_keys(impl, rng, T, S):
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 1, 2, T, S, 16)
    _check_forward(mod, q, k, v, True, f"Causal with T = {T} queries and S = {S} keys is wrong: the queries are the last T positions, so query i sees keys j <= i + S - T.")


@forward_exercise
def test_forward_scale(impl, rng):
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 1, 2, 24, 24, 16)
    _check_forward(mod, q, k, v, True, "With scale = 0.3 the output is wrong: multiply the scores q k^T by the scale argument (the launcher passes 1/sqrt(D) when scale is None).", scale=0.3)


@forward_exercise
def test_forward_float16_and_head_dim_64(impl, rng):
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 1, 2, 40, 40, 64, dtype=torch.float16)
    _check_forward(mod, q, k, v, True, "float16 inputs with D = 64 give a wrong output: keep m_i, l_i and acc in float32, cast p to v's dtype for tl.dot, and cast the output to o's dtype when storing.")


@forward_exercise
def test_forward_through_the_attention_op(impl, rng):
    """``attention`` (ops.attention's signature) runs your forward kernel; grouped-query heads are expanded for it."""
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 2, 4, 19, 33, 16, Hkv=2)
    o = mod.attention(q, k, v, causal=True)
    G = q.shape[1] // k.shape[1]
    ref_o, _, _ = _reference(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), True)
    assert_close(o, ref_o, hint="attention(q, k, v, causal=True) with 4 query heads sharing 2 kv heads and T = 19, S = 33 is wrong; the tests above name the kernel's mistake.", **_tol(q.dtype))


# --- the backward kernels -----------------------------------------------------------------------


def _backward_case(rng, B, H, T, S, D, causal, scale=None, dtype=torch.float32):
    q, k, v = _qkv(rng, B, H, T, S, D, dtype=dtype)
    do = _rand(rng, B, H, T, D, dtype=dtype)
    return _backward_case_from(q, k, v, do, causal, scale)


def _backward_case_from(q, k, v, do, causal, scale=None):
    """Guarded copies of q, k, v, do and of the reference's lse and delta (float32), and the reference."""
    ref = _Backward(q, k, v, do, causal, scale)
    lse = ref.lse.to(device=q.device, dtype=torch.float32)
    delta = ref.delta.to(device=q.device, dtype=torch.float32)
    names = ("q", "k", "v", "do", "lse", "delta")
    return tuple(guarded(t, name) for t, name in zip((q, k, v, do, lse, delta), names)), ref


def _check_dkdv(mod, rng, B, H, T, S, D, causal, hint, scale=None, dtype=torch.float32, **blocks):
    (q, k, v, do, lse, delta), ref = _backward_case(rng, B, H, T, S, D, causal, scale, dtype)
    dk = guarded_empty(k.shape, dtype, k.device, name="dk")
    dv = guarded_empty(v.shape, dtype, v.device, name="dv")
    got = mod.flash_backward_dkdv(q, k, v, do, lse, delta, causal=causal, scale=scale, dk=dk, dv=dv, **(blocks or BLOCKS))
    assert isinstance(got, tuple) and len(got) == 2 and got[0] is dk and got[1] is dv, "flash_backward_dkdv must return the (dk, dv) it was given to fill."
    assert_guards_intact(dk, dv, hint="mask the stores of dk and dv to keys < S.")
    tol = _grad_tol(dtype)
    assert_close(dv, ref.dv, what="dv", hint=hint, **tol)
    _check_grad("dk", dk, ref.dk, ref.dk_no_delta, hint, tol)


@dkdv_exercise
def test_dkdv_one_tile(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 1, 2, 16, 16, 16, False, "For a single 16x16 tile: P = exp(scale * q k^T - lse), dV = P^T dO, dS = P * (dO V^T - delta), dK = scale * dS^T Q.")


@dkdv_exercise
def test_dkdv_several_tiles_ragged(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 2, 2, 37, 45, 32, False, "With T = 37, S = 45 (several 16x16 tiles, partial ones at the ends) dk or dv is wrong: loop over every query block up to T, mask the loads to rows < T and keys < S, and give P = 0 outside them.")


@dkdv_exercise
def test_dkdv_more_queries_than_keys(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 1, 2, 50, 9, 16, False, "With T = 50 queries and S = 9 keys dk or dv is wrong: every program loops over all query blocks (up to T), and its key block is masked to keys < S.")


@dkdv_exercise
def test_dkdv_causal(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 1, 2, 37, 37, 16, True, "The causal dk or dv is wrong: P must be 0 where key j > query i (the diagonal j == i is kept); if you skip query blocks, skip only those whose rows all come before the block's first key.")


@dkdv_exercise
def test_dkdv_causal_fewer_queries_than_keys(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 1, 2, 5, 67, 16, True, "Causal with T = 5 queries and S = 67 keys: query i sees keys j <= i + S - T, so the first keys are seen by every query and the last by only the last ones.")


@dkdv_exercise
def test_dkdv_scale(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 1, 2, 24, 24, 16, True, "With scale = 0.3: the scores are scale * q k^T, and dK carries the factor scale (dK = scale * dS^T Q), dV does not.", scale=0.3)


@dkdv_exercise
def test_dkdv_blocks_that_are_not_square(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 1, 1, 29, 45, 16, True, "With BLOCK_M = 32 and BLOCK_N = 16 dk or dv is wrong: the key block has BLOCK_N rows and the query blocks BLOCK_M rows; check each range and the causal mask.", block_m=32, block_n=16)


@dkdv_exercise
def test_dkdv_float16(impl, rng):
    mod = impl.load(TOPIC)
    _check_dkdv(mod, rng, 1, 2, 33, 33, 64, True, "float16 inputs with D = 64: accumulate dk and dv in float32, cast p and ds to the inputs' dtype for tl.dot, and store in k's dtype.", dtype=torch.float16)


def _check_dq(mod, rng, B, H, T, S, D, causal, hint, scale=None, dtype=torch.float32, **blocks):
    (q, k, v, do, lse, delta), ref = _backward_case(rng, B, H, T, S, D, causal, scale, dtype)
    dq = guarded_empty(q.shape, dtype, q.device, name="dq")
    got = mod.flash_backward_dq(q, k, v, do, lse, delta, causal=causal, scale=scale, dq=dq, **(blocks or BLOCKS))
    assert got is dq, "flash_backward_dq must return the dq it was given to fill."
    assert_guards_intact(dq, hint="mask the store of dq to rows < T.")
    tol = _grad_tol(dtype)
    _check_grad("dq", dq, ref.dq, ref.dq_no_delta, hint, tol)


@dq_exercise
def test_dq_one_tile(impl, rng):
    mod = impl.load(TOPIC)
    _check_dq(mod, rng, 1, 2, 16, 16, 16, False, "For a single 16x16 tile: P = exp(scale * q k^T - lse), dS = P * (dO V^T - delta), dQ = scale * dS K.")


@dq_exercise
@pytest.mark.parametrize("T, S", [(37, 45), (50, 9)])
def test_dq_ragged(impl, rng, T, S):
    mod = impl.load(TOPIC)
    _check_dq(mod, rng, 2, 2, T, S, 32, False, f"With T = {T}, S = {S} (not multiples of the block size 16) dq is wrong: loop over every key block up to S, mask the loads to keys < S (P = 0 there) and the store to rows < T.")


@dq_exercise
@pytest.mark.parametrize("T, S", [(37, 37), (5, 67)])
def test_dq_causal(impl, rng, T, S):
    mod = impl.load(TOPIC)
    _check_dq(mod, rng, 1, 2, T, S, 16, True, f"Causal with T = {T}, S = {S}: dq is wrong. Query i sees keys j <= i + S - T (P = 0 for later keys); if you stop the loop early, stop after the last key the block's last row sees.")


@dq_exercise
def test_dq_scale_and_float16(impl, rng):
    mod = impl.load(TOPIC)
    _check_dq(mod, rng, 1, 2, 24, 24, 16, True, "With scale = 0.3: the scores are scale * q k^T, and dQ carries the factor scale (dQ = scale * dS K).", scale=0.3)
    _check_dq(mod, rng, 1, 2, 33, 33, 64, True, "float16 inputs with D = 64: accumulate dq in float32, cast ds to k's dtype for tl.dot, and store in q's dtype.", dtype=torch.float16)


def _stores_stay_in_bounds(mod, q, k, v, do, causal):
    """Run the three launchers into guarded outputs first: attention() allocates its own, where a stray store would crash.

    Not needed where memcheck stops a stray store before it happens (the interpreter).
    """
    if memcheck_status()[0] and is_interpreter():
        return
    _forward(mod, q, k, v, causal)
    (q, k, v, do, lse, delta), _ = _backward_case_from(q, k, v, do, causal)
    dk = guarded_empty(k.shape, k.dtype, k.device, name="dk")
    dv = guarded_empty(v.shape, v.dtype, v.device, name="dv")
    dq = guarded_empty(q.shape, q.dtype, q.device, name="dq")
    mod.flash_backward_dkdv(q, k, v, do, lse, delta, causal=causal, dk=dk, dv=dv, **BLOCKS)
    mod.flash_backward_dq(q, k, v, do, lse, delta, causal=causal, dq=dq, **BLOCKS)
    assert_guards_intact(dk, dv, dq, hint="mask the stores of dk and dv to keys < S, and of dq to rows < T.")


@dq_exercise
@pytest.mark.parametrize("causal, T, S", [(True, 21, 37), (False, 30, 17)])
def test_attention_op_forward_and_every_gradient(impl, rng, causal, T, S):
    """Your three kernels together, through ``attention`` (ops.attention's signature), grouped-query heads included."""
    mod = impl.load(TOPIC)
    q, k, v = _qkv(rng, 1, 4, T, S, 16, Hkv=2)
    do = _rand(rng, 1, 4, T, 16)
    G = q.shape[1] // k.shape[1]
    _stores_stay_in_bounds(mod, q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), do, causal)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = mod.attention(*leaves, causal=causal)
    o.backward(do)
    rq, rk, rv = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))  # k, v with Hkv heads: expanded inside autograd
    s = _scores(rq, rk.repeat_interleave(G, 1), causal, 1.0 / math.sqrt(16))
    ref = torch.softmax(s, -1) @ rv.repeat_interleave(G, 1)
    ref.backward(do.double().cpu())
    what = f"attention(q, k, v, causal={causal}) with 4 query heads sharing 2 kv heads, T = {T}, S = {S}"
    assert_close(o, ref, hint=f"{what}: the output is wrong (the flash_forward tests say why).", **_tol(q.dtype))
    for name, leaf, r in zip(("dq", "dk", "dv"), leaves, (rq, rk, rv)):
        assert leaf.grad is not None, f"{what}: no {name} came back from the backward."
        assert_close(leaf.grad, r.grad, what=name, hint=f"{what}: {name} is wrong (the tests of its kernel on its own say why).", **_grad_tol(q.dtype))

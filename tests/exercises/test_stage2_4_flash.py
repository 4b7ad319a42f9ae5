"""Graded tests of stage 2: FlashAttention (exercises/stage2_attention/flash_attention.py).

``flash_forward``: the Triton forward kernel, through the given launcher, against
a float64 reference of the output and of the log-sum-exp. ``flash_backward``:
the tile-by-tile backward, fed the float64 reference's output and lse (so that it
is graded on its own, whatever the state of the forward), against float64
autograd. Each test aims at one usual mistake and says which in its message:
a missing rescale of the accumulator, an off-by-one causal mask, causal
alignment when T < S, unmasked tails (T, S not multiples of the block), the
wrong scale, a wrong lse, a missing delta term, a full (T, S) matrix.

Block sizes are fixed (16) where a test depends on them, so that the lengths
below straddle block edges.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close

TOPIC = "stage2_attention/flash_attention"
BLOCKS = dict(block_m=16, block_n=16)

forward_exercise = pytest.mark.exercise("flash_forward", stage=2, points=5, title="FlashAttention forward kernel")
backward_exercise = pytest.mark.exercise("flash_backward", stage=2, points=4, title="FlashAttention backward")


def _rand(rng, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=rng) * scale).to(dtype).to(get_device())


def _qkv(rng, B, H, T, S, D, dtype=torch.float32, scale=1.0):
    return _rand(rng, B, H, T, D, dtype=dtype, scale=scale), _rand(rng, B, H, S, D, dtype=dtype, scale=scale), _rand(rng, B, H, S, D, dtype=dtype)


def _reference(q, k, v, causal, scale=None):
    """float64 output (B, H, T, D), lse (B, H, T), and the autograd leaves, on the CPU."""
    q, k, v = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        future = torch.arange(S)[None, :] > torch.arange(T)[:, None] + (S - T)
        s = s.masked_fill(future, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.exp(s - lse[..., None]) @ v
    return o, lse, (q, k, v)


def _tol(dtype):
    """Output tolerance: float32 in the interpreter is near-exact; tl.dot on a GPU rounds fp32 to TF32."""
    if dtype == torch.float16:
        return dict(atol=3e-3, rtol=3e-3)
    return dict(atol=1e-2, rtol=1e-2) if has_gpu() else dict(atol=1e-5, rtol=1e-5)


def _forward(mod, q, k, v, causal, scale=None):
    o, lse = mod.flash_attention_forward(q, k, v, causal=causal, scale=scale, **BLOCKS)
    assert o.shape == q.shape and o.dtype == q.dtype, f"The output must be (B, H, T, D) in q's dtype, got {tuple(o.shape)} {o.dtype}."
    return o, lse


def _check_forward(mod, q, k, v, causal, hint, scale=None):
    o, lse = _forward(mod, q, k, v, causal, scale)
    ref_o, ref_lse, _ = _reference(q, k, v, causal, scale)
    assert_close(o, ref_o, hint=hint, **_tol(q.dtype))
    assert_close(lse, ref_lse, what="the lse", **(_tol(q.dtype) if has_gpu() else dict(atol=1e-4, rtol=1e-4)),
                 hint="The output is right but lse is wrong: store lse = m_i + log(l_i) (natural log, of the scaled scores) for each row < T.")  # fmt: skip


# --- flash_forward ----------------------------------------------------------------------


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


# --- flash_backward -------------------------------------------------------------------------


def _check_backward(mod, rng, B, H, T, S, D, causal, hint, scale=None, dtype=torch.float32, **blocks):
    q, k, v = _qkv(rng, B, H, T, S, D, dtype=dtype)
    do = _rand(rng, B, H, T, D, dtype=dtype)
    ref_o, ref_lse, leaves = _reference(q, k, v, causal, scale)
    ref_o.backward(do.double().cpu())
    o = ref_o.detach().to(device=q.device, dtype=dtype)
    lse = ref_lse.detach().to(device=q.device, dtype=torch.float32)
    grads = mod.flash_attention_backward(q, k, v, o, lse, do, causal=causal, scale=scale, **(blocks or BLOCKS))
    assert isinstance(grads, tuple) and len(grads) == 3, "flash_attention_backward must return a tuple (dq, dk, dv)."
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for name, g, leaf in zip(("dq", "dk", "dv"), grads, leaves):
        assert g.dtype == dtype, f"{name} must have the inputs' dtype {dtype}, got {g.dtype}."
        assert_close(g, leaf.grad, what=name, hint=hint, **tol)


@backward_exercise
def test_backward_one_tile(impl, rng):
    mod = impl.load(TOPIC)
    _check_backward(mod, rng, 1, 2, 16, 16, 16, False, "For a single 16x16 tile: P = exp(scale * q k^T - lse), dV = P^T dO, dS = P * (dO V^T - delta) with delta = rowsum(dO * O), dQ = scale * dS K, dK = scale * dS^T Q.")


@backward_exercise
def test_backward_several_tiles_ragged(impl, rng):
    mod = impl.load(TOPIC)
    _check_backward(mod, rng, 2, 2, 37, 45, 32, False, "With T = 37, S = 45 (several 16x16 tiles, partial ones at the ends) the gradients are wrong: accumulate into dq, dk, dv over all tiles, the partial last ones included, and use the lse of each row to recompute P.")


@backward_exercise
def test_backward_causal(impl, rng):
    mod = impl.load(TOPIC)
    _check_backward(mod, rng, 1, 2, 37, 37, 16, True, "The causal gradients are wrong: P must be 0 where key j > query i (the diagonal j == i is kept).")


@backward_exercise
def test_backward_causal_fewer_queries_than_keys(impl, rng):
    mod = impl.load(TOPIC)
    _check_backward(mod, rng, 1, 2, 5, 67, 16, True, "Causal with T = 5 queries and S = 67 keys is wrong: query i sees keys j <= i + S - T.")


@backward_exercise
def test_backward_scale(impl, rng):
    mod = impl.load(TOPIC)
    _check_backward(mod, rng, 1, 2, 24, 24, 16, True, "With scale = 0.3: the scores are scale * q k^T, and dQ and dK carry the factor scale (dQ = scale * dS K, dK = scale * dS^T Q).", scale=0.3)


@backward_exercise
def test_backward_other_block_sizes(impl, rng):
    mod = impl.load(TOPIC)
    _check_backward(mod, rng, 1, 1, 29, 33, 16, True, "With block_m = 8 and block_n = 32 (tiles that are not square) the gradients are wrong: check each tile's row and column ranges and its causal mask.", block_m=8, block_n=32)


@backward_exercise
def test_backward_float16(impl, rng):
    mod = impl.load(TOPIC)
    _check_backward(mod, rng, 1, 2, 33, 33, 32, True, "float16 inputs: compute in float32 and return dq, dk, dv in the inputs' dtype.", dtype=torch.float16)


@backward_exercise
def test_backward_never_builds_the_full_score_matrix(impl, rng):
    """Record the size of every tensor PyTorch creates during the call."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and not t._is_view():
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    mod = impl.load(TOPIC)
    B, H, T, S, D = 1, 2, 96, 96, 16
    q, k, v = _qkv(rng, B, H, T, S, D)
    do = _rand(rng, B, H, T, D)
    ref_o, ref_lse, _ = _reference(q, k, v, False)
    o, lse = ref_o.detach().float().to(q.device), ref_lse.detach().float().to(q.device)
    with Largest():
        mod.flash_attention_backward(q, k, v, o, lse, do, causal=False, **BLOCKS)
    full = B * H * T * S
    assert Largest.numel < full // 4, (
        f"flash_attention_backward made a tensor of {Largest.numel} elements, as large as the whole "
        f"(T, S) score matrix ({full}): work one (block_m, block_n) tile at a time."
    )

"""Graded tests of stage 2: rotary position embeddings (exercises/stage2_attention/rope.py).

``apply_rope`` is checked against a float64 pair-by-pair rotation written here,
with tables from the course's ``RotaryEmbedding`` at random positions (different
for each sequence of the batch), odd head counts and lengths, both table
shapes, float32/float16/float64, and its gradient. A wrong answer is compared
with the usual mistakes (neighbouring pairs (2i, 2i+1) instead of halves, the
sign of rotate_half flipped, cos and sin swapped, one token's angles used for
every token) and the failure names the one it matches, only when the error
looks like that mistake (``which_mistake``).

The exercise advises computing in float32 (``x.float()``), so float64 inputs
are checked to float32's precision: following the advice passes, and so does
computing in float64.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.grading.checks import assert_close, tolerance, which_mistake
from llm_course.models.components.embeddings.rotary import RotaryEmbedding

TOPIC = "stage2_attention/rope"

rope_exercise = pytest.mark.exercise("apply_rope", stage=2, points=2, title="Rotary embeddings")


def rotate64(x, cos, sin, *, pairs="halves", sign=1, per_token=True, per_sequence=True, swapped=False):
    """float64 rotation, pair by pair; the keyword arguments make the usual wrong variants."""
    x, cos, sin = x.double(), cos.double(), sin.double()
    if swapped:
        cos, sin = sin, cos
    if cos.dim() == 2:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    if not per_token:
        cos, sin = cos[:, :1].expand_as(cos), sin[:, :1].expand_as(sin)
    if not per_sequence:
        cos, sin = cos[:1], sin[:1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B or 1, 1, T, D)
    D = x.shape[-1]
    half = D // 2
    out = torch.empty(torch.broadcast_shapes(x.shape, cos.shape), dtype=torch.float64)
    for i in range(half):
        a, b = (i, i + half) if pairs == "halves" else (2 * i, 2 * i + 1)
        ca, cb, sa, sb = cos[..., a], cos[..., b], sin[..., a], sin[..., b]
        if pairs == "neighbours, angle i":  # pair (2i, 2i+1) turned by angle i: the other convention's layout
            ca = cb = cos[..., i]
            sa = sb = sin[..., i]
        out[..., a] = x[..., a] * ca - sign * x[..., b] * sa
        out[..., b] = x[..., b] * cb + sign * x[..., a] * sb
    return out


MISTAKES = [
    (dict(pairs="neighbours"), "features are paired as neighbours (2i, 2i+1); pair feature i with feature i + D/2 (the two halves)."),
    (dict(pairs="neighbours, angle i"), "features are paired as neighbours (2i, 2i+1); pair feature i with feature i + D/2 (the two halves)."),
    (dict(per_sequence=False), "every sequence got the angles of the first one; with (B, T, D) tables, sequence b must use cos[b] and sin[b]."),
    (dict(sign=-1), "the rotation goes the wrong way: rotate_half(x) is cat(-x2, x1), not cat(x2, -x1)."),
    (dict(swapped=True), "cos and sin are swapped: out = x * cos + rotate_half(x) * sin."),
    (dict(per_token=False), "every token got the angles of one position; token t must use row t of cos and sin."),
]


def _tol(dtype) -> dict:
    """The exercise computes in float32 (its advice): float64 inputs are held to float32's precision."""
    return tolerance(torch.float32 if dtype == torch.float64 else dtype)


def check(out, x, cos, sin, what="the output"):
    expected = rotate64(x, cos, sin)
    candidates = [(lambda kw=kw: rotate64(x, cos, sin, **kw), sentence) for kw, sentence in MISTAKES]
    hint = which_mistake(out, expected, candidates, atol=1e-3, rtol=1e-3) or "apply_rope differs from x * cos + rotate_half(x) * sin."
    assert_close(out, expected, hint=hint, what=what, **_tol(x.dtype))
    assert out.dtype == x.dtype, f"the output must keep x's dtype {x.dtype}, got {out.dtype}."


def tables(rng, B, T, D, shared=False, base=10000.0):
    """cos, sin at random positions: (B, T, D), or (T, D) when ``shared``."""
    rope = RotaryEmbedding(D, 4096, rope_theta=base)
    pos = torch.randint(0, 4096, (1 if shared else B, T), generator=rng)
    cos, sin = rope(pos)
    return (cos[0], sin[0]) if shared else (cos, sin)


@rope_exercise
@pytest.mark.parametrize("B,H,T,D", [(2, 3, 7, 16), (3, 5, 1, 8), (1, 1, 9, 64), (2, 7, 5, 80)])
def test_apply_rope_per_sequence_positions(impl, rng, B, H, T, D):
    fn = impl.load(TOPIC).apply_rope
    x = torch.randn(B, H, T, D, generator=rng, dtype=torch.float64)
    cos, sin = tables(rng, B, T, D)
    check(fn(x, cos.double(), sin.double()), x, cos, sin)


@rope_exercise
def test_apply_rope_shared_table_float32(impl, rng):
    fn = impl.load(TOPIC).apply_rope
    x = torch.randn(3, 4, 6, 32, generator=rng)
    cos, sin = tables(rng, 3, 6, 32, shared=True)
    check(fn(x, cos, sin), x, cos, sin)


@rope_exercise
def test_apply_rope_float16_keeps_dtype(impl, rng):
    fn = impl.load(TOPIC).apply_rope
    x = torch.randn(2, 3, 5, 16, generator=rng).half()
    cos, sin = tables(rng, 2, 5, 16)
    check(fn(x, cos, sin), x, cos, sin)


@rope_exercise
def test_apply_rope_keeps_length_and_relative_angles(impl, rng):
    """A rotation keeps each pair's length, and q . k depends only on the distance of their positions."""
    fn = impl.load(TOPIC).apply_rope
    D = 16
    rope = RotaryEmbedding(D, 512)
    q = torch.randn(1, 1, 1, D, generator=rng, dtype=torch.float64)
    k = torch.randn(1, 1, 1, D, generator=rng, dtype=torch.float64)

    def rotated(x, p):
        cos, sin = rope(torch.tensor([p]))
        return fn(x, cos.double(), sin.double())

    m, n, shift = 37, 11, int(torch.randint(1, 400, (1,), generator=rng))
    assert torch.allclose(rotated(q, m).norm(), q.norm()), "a rotation must keep the length of each head vector."
    near = (rotated(q, m) * rotated(k, n)).sum()
    far = (rotated(q, m + shift) * rotated(k, n + shift)).sum()
    assert torch.allclose(near, far, atol=1e-4), "q . k changed when both positions moved by the same amount; it must depend only on m - n."


@rope_exercise
def test_apply_rope_gradient(impl, rng):
    fn = impl.load(TOPIC).apply_rope
    x = torch.randn(2, 3, 4, 8, generator=rng, dtype=torch.float64, requires_grad=True)
    cos, sin = tables(rng, 2, 4, 8)
    out = fn(x, cos.double(), sin.double())
    check(out, x.detach(), cos, sin)
    dout = torch.randn(out.shape, generator=rng, dtype=torch.float64)
    (dx,) = torch.autograd.grad(out, x, dout)
    # the gradient of a rotation is the rotation by the opposite angle
    assert_close(dx, rotate64(dout, cos, -sin), hint="the gradient of apply_rope is wrong.", what="dx", **_tol(dx.dtype))

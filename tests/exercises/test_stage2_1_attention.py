"""Graded tests of stage 2: attention (exercises/stage2_attention/attention.py).

``causal_attention`` and ``gqa_attention`` are checked against a float64
reference written here, on fresh random inputs with odd sizes, every output and
every gradient. When an answer is wrong, the tests first compare it with the
usual mistakes (the diagonal masked, one future key let in, no mask, 1/D or no
scale, softmax over the queries, head h reading kv head h % Hkv, the causal mask
not aligned to the end when T < S) and name the one it matches, only when the
error looks like that mistake (``which_mistake``).
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage2_attention/attention"

causal_exercise = pytest.mark.exercise("causal_attention", stage=2, points=3, title="Causal attention")
gqa_exercise = pytest.mark.exercise("gqa_head_sharing", stage=2, points=3, title="Grouped-query attention")


def reference(q, k, v, *, causal=True, scale=None, mask="end", heads="group", softmax_dim=-1):
    """float64 attention; the keyword arguments also produce the usual wrong variants."""
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    kv_of = [h // G if heads == "group" else h % Hkv for h in range(Hq)]
    k, v = k[:, kv_of], v[:, kv_of]  # (B, Hq, S, D)
    scale = 1 / math.sqrt(D) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale  # (B, Hq, T, S)
    if causal:
        i = torch.arange(T)[:, None] + (0 if mask == "start" else S - T)
        j = torch.arange(S)[None, :]
        hidden = j >= i if mask == "strict" else j > i + 1 if mask == "one future" else j > i
        s = s.masked_fill(hidden, float("-inf"))
    p = torch.softmax(s, dim=softmax_dim).nan_to_num(0.0)
    return p @ v


CAUSAL_MISTAKES = [
    (dict(mask="strict"), "the causal mask hides the diagonal: query i must see key i itself (mask only j > i)."),
    (dict(mask="one future"), "the causal mask lets in one future key: a query at position i must see keys j <= i only (mask j > i, not j > i + 1)."),
    (dict(causal=False), "the future is not masked: query i must not see keys j > i."),
    (dict(scale="1/D"), "the scores are scaled by 1/D; scale them by 1/sqrt(D)."),
    (dict(scale=1.0), "the scores are not scaled; multiply q @ k^T by 1/sqrt(D)."),
    (dict(softmax_dim=-2), "the softmax runs over the queries; take it over the keys (the last dimension)."),
]
GQA_MISTAKES = [
    (dict(mask="start"), "with T < S the causal mask is not aligned to the end: query i sits at position i + S - T."),
    (dict(heads="modulo"), "query head h reads kv head h % Hkv; it must read kv head h // (Hq // Hkv)."),
] + CAUSAL_MISTAKES


def diagnose(out, q, k, v, mistakes, causal=True, default="the output differs from softmax(q @ k^T / sqrt(D) + mask) @ v."):
    """The sentence for the usual mistake ``out`` looks like (see ``which_mistake``), or ``default``."""

    def variant(kwargs):
        kw = dict(kwargs)
        if kw.get("scale") == "1/D":
            kw["scale"] = 1 / q.shape[-1]
        kw.setdefault("causal", causal)
        return lambda: reference(q, k, v, **kw)

    candidates = [(variant(kw), sentence) for kw, sentence in mistakes
                  if causal or not (kw.get("mask") or "causal" in kw)]  # mask mistakes cannot show without a mask
    return which_mistake(out, reference(q, k, v, causal=causal), candidates) or default


def check(out, q, k, v, mistakes, *, causal=True, what="the output"):
    """Compare with the float64 reference; on failure, name the usual mistake the output matches."""
    hint = diagnose(out, q, k, v, mistakes, causal)
    assert_close(out, reference(q, k, v, causal=causal), hint=hint, what=what)
    assert out.dtype == q.dtype, f"the output must keep the input dtype {q.dtype}, got {out.dtype}."


def rand(rng, *shape, dtype=torch.float64, offset=None):
    t = torch.randn(*shape, generator=rng, dtype=torch.float64)
    if offset is not None:  # a different mean per head: a wrong head mapping cannot hide
        t = t + offset * torch.arange(shape[1], dtype=torch.float64).view(1, -1, 1, 1)
    return t.to(dtype)


# --- causal_attention ------------------------------------------------------------------------


@causal_exercise
@pytest.mark.parametrize("B,H,T,D", [(2, 3, 7, 16), (1, 5, 13, 24), (3, 2, 1, 8)])
def test_causal_attention_matches_definition(impl, rng, B, H, T, D):
    fn = impl.load(TOPIC).causal_attention
    q, k, v = rand(rng, B, H, T, D), rand(rng, B, H, T, D), rand(rng, B, H, T, D, offset=1.0)
    check(fn(q, k, v), q, k, v, CAUSAL_MISTAKES)


@causal_exercise
def test_causal_attention_first_query_sees_only_itself(impl, rng):
    fn = impl.load(TOPIC).causal_attention
    q, k, v = rand(rng, 2, 2, 5, 8), rand(rng, 2, 2, 5, 8), rand(rng, 2, 2, 5, 8)
    out = fn(q, k, v)
    assert torch.isfinite(out).all(), "the output has NaN: query 0 must still see key 0 (the diagonal is not masked)."
    assert_close(out[:, :, 0], v[:, :, 0], hint="query 0 sees only key 0, so its output must be v[:, :, 0].", what="row 0")


@causal_exercise
def test_causal_attention_float32_and_large_scores(impl, rng):
    fn = impl.load(TOPIC).causal_attention
    q, k, v = rand(rng, 2, 3, 9, 16, dtype=torch.float32), rand(rng, 2, 3, 9, 16, dtype=torch.float32), rand(rng, 2, 3, 9, 16, dtype=torch.float32)
    check(fn(q, k, v), q, k, v, CAUSAL_MISTAKES)
    q, k, v = (t.double() * s for t, s in ((q, 100), (k, 100), (v, 1)))  # scores in the thousands
    out = fn(q, k, v)
    assert torch.isfinite(out).all(), "large scores give inf/NaN: subtract the row max before exp (torch.softmax does)."
    check(out, q, k, v, CAUSAL_MISTAKES)


@causal_exercise
def test_causal_attention_gradients(impl, rng):
    fn = impl.load(TOPIC).causal_attention
    q, k, v = (rand(rng, 2, 3, 6, 8).requires_grad_() for _ in range(3))
    out = fn(q, k, v)
    check(out, q.detach(), k.detach(), v.detach(), CAUSAL_MISTAKES)
    dout = rand(rng, 2, 3, 6, 8)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = torch.autograd.grad(reference(q, k, v), (q, k, v), dout)
    for name, g, r in zip("qkv", grads, ref):
        assert_close(g, r, hint=f"the gradient with respect to {name} is wrong.", what=f"d{name}")


# --- gqa_attention ---------------------------------------------------------------------------


@gqa_exercise
@pytest.mark.parametrize("B,Hq,Hkv,T,D", [(2, 6, 2, 7, 16), (1, 8, 1, 5, 8), (2, 3, 3, 9, 8), (1, 12, 4, 4, 24)])
def test_gqa_heads(impl, rng, B, Hq, Hkv, T, D):
    fn = impl.load(TOPIC).gqa_attention
    q, k, v = rand(rng, B, Hq, T, D, offset=0.5), rand(rng, B, Hkv, T, D), rand(rng, B, Hkv, T, D, offset=2.0)
    check(fn(q, k, v, causal=True), q, k, v, GQA_MISTAKES)


@gqa_exercise
@pytest.mark.parametrize("T,S", [(3, 11), (1, 6), (5, 6)])
def test_gqa_with_a_cache_t_less_than_s(impl, rng, T, S):
    fn = impl.load(TOPIC).gqa_attention
    q, k, v = rand(rng, 2, 4, T, 8, offset=0.5), rand(rng, 2, 2, S, 8), rand(rng, 2, 2, S, 8, offset=2.0)
    check(fn(q, k, v, causal=True), q, k, v, GQA_MISTAKES)


@gqa_exercise
def test_gqa_not_causal(impl, rng):
    fn = impl.load(TOPIC).gqa_attention
    q, k, v = rand(rng, 2, 6, 5, 8, offset=0.5), rand(rng, 2, 3, 9, 8), rand(rng, 2, 3, 9, 8, offset=2.0)
    out = fn(q, k, v, causal=False)
    expected = reference(q, k, v, causal=False)
    if isinstance(out, torch.Tensor) and out.shape == expected.shape and torch.allclose(
        out.double(), reference(q, k, v, causal=True), atol=1e-6
    ):
        raise AssertionError("with causal=False every query must see every key; the output is masked.")
    check(out, q, k, v, GQA_MISTAKES, causal=False)


@gqa_exercise
def test_gqa_float32_and_gradients(impl, rng):
    fn = impl.load(TOPIC).gqa_attention
    q = rand(rng, 2, 4, 5, 8, dtype=torch.float32, offset=0.5).requires_grad_()
    k = rand(rng, 2, 2, 7, 8, dtype=torch.float32).requires_grad_()
    v = rand(rng, 2, 2, 7, 8, dtype=torch.float32, offset=2.0).requires_grad_()
    out = fn(q, k, v, causal=True)
    check(out, q.detach(), k.detach(), v.detach(), GQA_MISTAKES)
    dout = rand(rng, 2, 4, 5, 8, dtype=torch.float32)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad(reference(q64, k64, v64), (q64, k64, v64), dout.double())
    for name, g, r in zip("qkv", grads, ref):
        assert_close(g, r, hint=f"the gradient with respect to {name} is wrong (each kv head gets the sum over its query heads).", what=f"d{name}")

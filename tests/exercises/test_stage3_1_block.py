"""Graded tests of stage 3: a pre-norm transformer block (exercises/stage3_models/block.py).

``block_forward`` is given the parts of a block, built here from the course's
layers with random weights (the norms too, so that ln_1 and ln_2 differ): a
GPT-2 block (LayerNorm, MultiHeadAttention, MLP) and a Qwen2 block (RMSNorm,
GroupedQueryAttention with positions and a padding mask, GatedMLP). The parts
are given, so the reference here composes them directly,
``h = x + attn(ln_1(x)); h + mlp(ln_2(h))``, in float64. A wrong answer is
compared with the usual mistakes (post-norm, a missing residual, the residual
added to the normalized copy, one norm used twice or the two swapped, the MLP
fed x instead of h, the attention's keyword arguments dropped) and the failure
names the one it matches, only when the error looks like that mistake
(``which_mistake``). The gradient with respect to x and the weights is checked too.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake
from llm_course.models.components import MLP, GatedMLP, GroupedQueryAttention, LayerNorm, MultiHeadAttention, RMSNorm

TOPIC = "stage3_models/block"

block_exercise = pytest.mark.exercise("block_forward", stage=3, points=2, title="A pre-norm transformer block")


def randomize(module: torch.nn.Module, rng: torch.Generator) -> torch.nn.Module:
    """Random weights everywhere, norms included (around 1, so that ln_1 and ln_2 differ)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=rng, dtype=torch.float64).to(p.dtype)
            if name.endswith("weight") and p.dim() == 1:  # a norm's gain
                p.copy_(1.0 + 0.5 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return module.eval()


def gpt2_parts(rng, C=32, H=4, dtype=torch.float64):
    ln_1, ln_2 = LayerNorm(C), LayerNorm(C)
    attn, mlp = MultiHeadAttention(C, H), MLP(C)
    return [randomize(m, rng).to(dtype) for m in (ln_1, attn, ln_2, mlp)]


def qwen2_parts(rng, C=32, Hq=4, Hkv=2, dtype=torch.float64):
    ln_1, ln_2 = RMSNorm(C), RMSNorm(C)
    attn = GroupedQueryAttention(C, Hq, Hkv, max_position_embeddings=64)
    mlp = GatedMLP(C, 48)
    return [randomize(m, rng).to(dtype) for m in (ln_1, attn, ln_2, mlp)]


def reference(x, ln_1, attn, ln_2, mlp, kwargs=None, mistake=None):
    """The pre-norm block from its parts; ``mistake`` makes the usual wrong variants."""
    kw = dict(kwargs or {})
    if mistake == "no kwargs":
        kw = {}
    if mistake == "swapped":
        ln_1, ln_2 = ln_2, ln_1
    if mistake == "ln_1 twice":
        ln_2 = ln_1
    if mistake == "ln_2 twice":
        ln_1 = ln_2
    if mistake == "post-norm":
        h = ln_1(x + attn(x, **kw))
        return ln_2(h + mlp(h))
    n = ln_1(x)
    a = attn(n, **kw)
    h = a if mistake == "no attention residual" else (n if mistake in ("residual of the normed", "attention residual of the normed") else x) + a
    if mistake == "mlp on x":
        return h + mlp(ln_2(x))
    n = ln_2(h)
    m = mlp(n)
    if mistake == "no mlp residual":
        return m
    if mistake == "mlp added to x":
        return x + m
    if mistake in ("residual of the normed", "mlp residual of the normed"):
        return n + m
    return h + m


MISTAKES = [
    ("post-norm", "the norms are after the residual additions (post-norm); GPT-2 and Qwen2 are pre-norm: h = x + attn(ln_1(x)), out = h + mlp(ln_2(h))."),
    ("residual of the normed", "the residual adds the sub-layer's output to the normalized copy; add it to the stream itself: h = x + attn(ln_1(x)), not ln_1(x) + attn(ln_1(x))."),
    ("attention residual of the normed", "the attention's residual adds its output to the normalized copy; add it to the stream itself: h = x + attn(ln_1(x)), not ln_1(x) + attn(ln_1(x))."),
    ("mlp residual of the normed", "the MLP's residual adds its output to the normalized copy; add it to the stream itself: h + mlp(ln_2(h)), not ln_2(h) + mlp(ln_2(h))."),
    ("no attention residual", "the attention's residual is missing: h = x + attn(ln_1(x)), not attn(ln_1(x))."),
    ("no mlp residual", "the MLP's residual is missing: return h + mlp(ln_2(h)), not mlp(ln_2(h))."),
    ("mlp added to x", "the MLP's output is added to x instead of h, which drops the attention's result: return h + mlp(ln_2(h))."),
    ("mlp on x", "the MLP reads x instead of h (that is a 'parallel' block); it must read the stream after attention: mlp(ln_2(h))."),
    ("ln_1 twice", "ln_1 is used for both sub-layers; the MLP has its own norm: mlp(ln_2(h))."),
    ("ln_2 twice", "ln_2 is used for both sub-layers; attention has its own norm: attn(ln_1(x))."),
    ("swapped", "ln_1 and ln_2 are swapped: ln_1 goes before attention, ln_2 before the MLP."),
    ("no kwargs", "the keyword arguments (position_ids, key_padding_mask, ...) did not reach attn; pass them on: attn(ln_1(x), **attn_kwargs)."),
]


def check(out, x, parts, kwargs=None, what="the block's output", **tol):
    expected = reference(x, *parts, kwargs=kwargs)
    candidates = [(lambda m=m: reference(x, *parts, kwargs=kwargs, mistake=m), sentence) for m, sentence in MISTAKES]
    hint = which_mistake(out, expected, candidates) or "the block's output differs from h + mlp(ln_2(h)) with h = x + attn(ln_1(x))."
    assert_close(out, expected, hint=hint, what=what, **tol)
    assert out.dtype == x.dtype, f"the output must keep x's dtype {x.dtype}, got {out.dtype}."


@block_exercise
@pytest.mark.parametrize("B,T", [(2, 7), (1, 1), (3, 4)])
def test_gpt2_block(impl, rng, B, T):
    fn = impl.load(TOPIC).block_forward
    parts = gpt2_parts(rng)
    x = 2.0 * torch.randn(B, T, 32, generator=rng, dtype=torch.float64) + 0.5
    with torch.no_grad():
        out = fn(x, *parts)
        check(out, x, parts)


@block_exercise
def test_qwen2_block_passes_positions_and_padding_to_attention(impl, rng):
    """Left padding: positions start at 0 on each sequence's first real token; padding keys are hidden."""
    fn = impl.load(TOPIC).block_forward
    parts = qwen2_parts(rng)
    B, T = 3, 6
    x = 2.0 * torch.randn(B, T, 32, generator=rng, dtype=torch.float64)
    pads = torch.tensor([0, 2, 4])
    key_padding_mask = torch.arange(T)[None, :] >= pads[:, None]  # (B, T) True for real tokens
    position_ids = (key_padding_mask.long().cumsum(-1) - 1).clamp(min=0) + 5  # (B, T), shifted: not 0 .. T-1
    kwargs = dict(position_ids=position_ids, key_padding_mask=key_padding_mask)
    with torch.no_grad():
        out = fn(x, *parts, **kwargs)
        check(out, x, parts, kwargs=kwargs)


@block_exercise
def test_float32_block(impl, rng):
    fn = impl.load(TOPIC).block_forward
    parts = qwen2_parts(rng, dtype=torch.float32)
    x = torch.randn(2, 5, 32, generator=rng)
    with torch.no_grad():
        out = fn(x, *parts)
        check(out, x, parts)


@block_exercise
def test_block_gradients(impl, rng):
    fn = impl.load(TOPIC).block_forward
    parts = gpt2_parts(rng)
    x = torch.randn(2, 5, 32, generator=rng, dtype=torch.float64, requires_grad=True)
    out = fn(x, *parts)
    check(out, x.detach(), parts)
    if not out.requires_grad:
        raise AssertionError("the output carries no gradient: the block must be differentiable (no .detach(), .data or torch.no_grad()).")
    dout = torch.randn(out.shape, generator=rng, dtype=torch.float64)
    weights = [parts[1].c_attn.weight, parts[3].c_fc.weight, parts[0].weight, parts[2].weight]
    names = ["x", "attn.c_attn.weight", "mlp.c_fc.weight", "ln_1.weight", "ln_2.weight"]
    grads = torch.autograd.grad(out, [x, *weights], dout, allow_unused=True)
    x2 = x.detach().clone().requires_grad_()
    ref = torch.autograd.grad(reference(x2, *parts), [x2, *weights], dout)
    for name, g, r in zip(names, grads, ref):
        if g is None:
            raise AssertionError(f"no gradient reached {name}: the block must be differentiable (no .detach(), .data or torch.no_grad()).")
        assert_close(g, r, hint=f"the gradient with respect to {name} is wrong.", what=f"d{name}")

"""Graded tests of stage 3: a decode step with a KV cache (exercises/stage3_models/kv_cache.py).

``decode_with_cache`` is called once per token on a course ``GroupedQueryAttention``
with random weights (biases included), from an empty cache or after a prompt
whose keys and values are already in it, with several query heads per kv head
(and one, and a single kv head). The outputs of the steps must be the rows of
one causal forward over the whole sequence, computed here in float64 from the
layer's weights (the rotary tables are the layer's own). The cache must hold
each token's key rotated at its position and its value at its slot, and the
slots not written yet must be left alone and never read: they hold random
numbers, or NaN.

A wrong answer is compared with the usual mistakes, each replayed step by step
here on the same inputs (every token rotated as if at position 0, every token
written to slot 0, the cached keys rotated again when read, the unwritten
slots read, the new token's own slot left out, q or k not rotated), and the
failure names the one it matches, only when the error looks like that mistake
(``which_mistake``).
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.grading.checks import assert_close, tolerance, which_mistake
from llm_course.models.components import GroupedQueryAttention

TOPIC = "stage3_models/kv_cache"

cache_exercise = pytest.mark.exercise("decode_with_cache", stage=3, points=3, title="A decode step with a KV cache")

C, D, S_MAX = 32, 8, 16


def layer(rng, Hq=4, Hkv=2, dtype=torch.float64) -> GroupedQueryAttention:
    attn = GroupedQueryAttention(C, Hq, Hkv, head_dim=D, max_position_embeddings=64, rope_theta=100.0)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=rng, dtype=torch.float64) / math.sqrt(p.shape[-1]))
    return attn.to(dtype).eval()


# --- the float64 reference, and the usual mistakes replayed ---------------------------------------


def weights(attn):
    w = lambda lin: (lin.weight.detach().double(), None if lin.bias is None else lin.bias.detach().double())  # noqa: E731
    return w(attn.q_proj), w(attn.k_proj), w(attn.v_proj), w(attn.o_proj)


def heads(x, lin, H):
    """(B, T, C) -> (B, H, T, D) through the linear layer (weight, bias)."""
    B, T, _ = x.shape
    w, b = lin
    y = x.double() @ w.T + (0 if b is None else b)
    return y.view(B, T, H, D).transpose(1, 2)


def rope(t, attn, positions):
    """Rotate (B, H, T, D) at these T positions with the layer's own tables (rotate-half pairs)."""
    cos, sin = attn.rotary_emb(torch.as_tensor(positions))  # (T, D)
    cos, sin = cos.double(), sin.double()
    t1, t2 = t[..., : D // 2], t[..., D // 2 :]
    return t * cos + torch.cat((-t2, t1), dim=-1) * sin


def attend(q, k, v, Hq, causal):
    """q (B, Hq, T, D), k, v (B, Hkv, S, D) -> (B, Hq, T, D); no key at all -> 0."""
    G = Hq // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, Hq, T, S)
    if causal:
        T, S = s.shape[-2:]
        s = s.masked_fill(torch.arange(S)[None, :] > torch.arange(T)[:, None] + S - T, float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0) @ v if s.shape[-1] else torch.zeros_like(q)


def full_forward(attn, x):
    """The truth: one causal forward over all N tokens.

    -> out (B, N, C), k rotated, k before RoPE, v (B, Hkv, N, D)."""
    Wq, Wk, Wv, Wo = weights(attn)
    Hq, Hkv = attn.num_attention_heads, attn.num_key_value_heads
    N = x.shape[1]
    k_raw = heads(x, Wk, Hkv)
    q, k, v = rope(heads(x, Wq, Hq), attn, range(N)), rope(k_raw, attn, range(N)), heads(x, Wv, Hkv)
    y = attend(q, k, v, Hq, causal=True).transpose(1, 2).reshape(x.shape[0], N, Hq * D)
    return y @ Wo[0].T, k, k_raw, v


def replay(attn, x, k0, v0, start, *, rope_at="pos", slot="pos", rerotate=False, span="written", rotate_q=True, rotate_k=True):
    """The decode steps of tokens x (B, T, C) at positions start.., from the caches k0, v0, done as a mistake does them."""
    Wq, Wk, Wv, Wo = weights(attn)
    Hq, Hkv = attn.num_attention_heads, attn.num_key_value_heads
    kc, vc = k0.double().clone(), v0.double().clone()
    outs = []
    for t in range(x.shape[1]):
        pos = start + t
        xt = x[:, t : t + 1]
        q, k, v = heads(xt, Wq, Hq), heads(xt, Wk, Hkv), heads(xt, Wv, Hkv)
        p = pos if rope_at == "pos" else 0
        q = rope(q, attn, [p]) if rotate_q else q
        k = rope(k, attn, [p]) if rotate_k else k
        s = pos if slot == "pos" else 0
        kc[:, :, s : s + 1], vc[:, :, s : s + 1] = k, v
        n = {"written": pos + 1, "all": kc.shape[2], "before": pos}[span]
        keys = rope(kc[:, :, :n], attn, range(n)) if rerotate else kc[:, :, :n]
        y = attend(q, keys, vc[:, :, :n], Hq, causal=False)
        outs.append(y.transpose(1, 2).reshape(x.shape[0], 1, Hq * D) @ Wo[0].T)
    return torch.cat(outs, dim=1)


MISTAKES = [
    (dict(rope_at=0), "every token is rotated as if it were at position 0: rotate q and k at the token's position pos (attn.rotary_emb(torch.tensor([pos])))."),
    (dict(slot=0), "every new key and value goes to slot 0: write them at slot pos, so that the cache fills up (k_cache[:, :, pos : pos + 1] = k)."),
    (dict(rerotate=True), "the cached keys are rotated again when they are read: each key goes into the cache already rotated at its own position; rotate only the new q and k."),
    (dict(span="all"), "attention reads every slot of the cache, also those not written yet: read slots 0 .. pos only (k_cache[:, :, : pos + 1])."),
    (dict(span="before"), "attention leaves out the new token's own slot: read slots 0 .. pos (pos + 1 keys), after writing slot pos."),
    (dict(rotate_k=False), "the new key is not rotated: apply RoPE at pos to k too, before writing it into the cache."),
    (dict(rotate_q=False), "the query is not rotated: apply RoPE at pos to q too."),
    (dict(rotate_q=False, rotate_k=False), "neither q nor k is rotated: apply RoPE at pos to both (the keys before they are stored)."),
]


# --- running the learner's steps, and the checks -----------------------------------------------


def decode(fn, attn, x, k_cache, v_cache, start):
    """Call decode_with_cache for each token; -> (B, T, C)."""
    outs = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            out = fn(attn, x[:, t : t + 1], k_cache, v_cache, start + t)
            if not isinstance(out, torch.Tensor):
                raise AssertionError(f"decode_with_cache must return the output tensor (B, 1, C), got {type(out).__name__}.")
            if tuple(out.shape) != (x.shape[0], 1, C):
                raise AssertionError(f"decode_with_cache returned shape {tuple(out.shape)}, expected (B, 1, C) = {(x.shape[0], 1, C)}.")
            outs.append(out)
    return torch.cat(outs, dim=1)


def same(a, b):
    """Equal, NaN included (unwritten slots may hold NaN)."""
    a, b = a.double(), b.double()
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def check_cache(caches, before, truth, start, end, tol):
    """Slots start .. end - 1 written (keys rotated at their positions), every other slot as it was."""
    names = ("k_cache", "v_cache")
    for name, cache, old in zip(names, caches, before):
        if start and not same(cache[:, :, :start], old[:, :, :start]):
            raise AssertionError(f"{name} changed in slots 0 .. {start - 1}, which hold the earlier tokens: write only slot pos.")
        if not same(cache[:, :, end:], old[:, :, end:]):
            raise AssertionError(f"{name} changed in slots {end} .. {cache.shape[2] - 1}, after the last token decoded: "
                                 "write only the new token's slot pos.")  # fmt: skip
    k_true, k_raw, v_true = truth
    for pos in range(start, end):
        for name, cache, old, want in zip(names, caches, before, (k_true, v_true)):
            got = cache[:, :, pos].double()
            if torch.allclose(got, want[:, :, pos], **tol):
                continue
            if same(cache[:, :, pos], old[:, :, pos]):
                raise AssertionError(f"slot {pos} of {name} was not written: write the new key and value into the given tensors, "
                                     "in place, at slot pos (k_cache[:, :, pos : pos + 1] = k), not into a copy.")  # fmt: skip
            if name == "k_cache" and torch.allclose(got, k_raw[:, :, pos], **tol):
                raise AssertionError(f"slot {pos} of k_cache holds the key before RoPE: store it rotated at pos, so that each key "
                                     "is rotated once, when it is made, and read back as it is.")  # fmt: skip
            what = "key, rotated at pos" if name == "k_cache" else "value"
            raise AssertionError(f"slot {pos} of {name} does not hold the new token's {what}.")


def run_and_check(fn, attn, prompt, new, fill):
    """Prompt tokens already in the cache, then one decode step per new token; check outputs and cache.

    ``fill`` makes the contents of the slots not written yet, from a shape.
    """
    dtype = attn.q_proj.weight.dtype
    x = torch.cat((prompt, new), dim=1).double()  # (B, N, C)
    B, P, N = x.shape[0], prompt.shape[1], x.shape[1]
    out_true, k_true, k_raw, v_true = full_forward(attn, x)
    shape = (B, attn.num_key_value_heads, S_MAX, D)
    k_cache, v_cache = fill(shape).to(dtype), fill(shape).to(dtype)
    k_cache[:, :, :P], v_cache[:, :, :P] = k_true[:, :, :P].to(dtype), v_true[:, :, :P].to(dtype)
    before = (k_cache.clone(), v_cache.clone())
    got = decode(fn, attn, new.to(dtype), k_cache, v_cache, P)
    expected = out_true[:, P:]  # (B, T, C): the rows of the new tokens
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else tolerance(torch.float32)
    candidates = [(lambda kw=kw: replay(attn, new, *before, P, **kw), sentence) for kw, sentence in MISTAKES]
    if not torch.isfinite(got).all():  # NaN outputs all look alike: name the cause instead
        hint = ("the output has NaN: a slot that was not written yet (NaN here) reached attention; write the new key and "
                "value at slot pos first, then read slots 0 .. pos only.")  # fmt: skip
    else:
        hint = which_mistake(got, expected, candidates, atol=1e-4, rtol=1e-4)
    if hint is not None:
        assert_close(got, expected, hint=hint, what="the decoded outputs", **tol)
    check_cache((k_cache, v_cache), before, (k_true, k_raw, v_true), P, N, tol)
    assert_close(got, expected, what="the decoded outputs", **tol,
                 hint="the decode steps differ from the rows of one causal forward over the whole sequence.")  # fmt: skip
    assert got.dtype == dtype, f"the output must keep x's dtype {dtype}, got {got.dtype}."
    return expected


def garbage(rng):
    return lambda shape: 3.0 * torch.randn(shape, generator=rng, dtype=torch.float64) + 1.0


def tokens(rng, B, T, dtype=torch.float64):
    return torch.randn(B, T, C, generator=rng, dtype=torch.float64).to(dtype)


# --- the tests ---------------------------------------------------------------------------------


@cache_exercise
@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (4, 4), (6, 1)])
def test_decode_from_an_empty_cache(impl, rng, Hq, Hkv):
    fn = impl.load(TOPIC).decode_with_cache
    attn = layer(rng, Hq, Hkv)
    run_and_check(fn, attn, tokens(rng, 2, 0), tokens(rng, 2, 7), garbage(rng))


@cache_exercise
def test_decode_after_a_prompt(impl, rng):
    """The prompt's keys and values are in slots 0 .. 4; decoding starts at position 5."""
    fn = impl.load(TOPIC).decode_with_cache
    attn = layer(rng)
    run_and_check(fn, attn, tokens(rng, 3, 5), tokens(rng, 3, 4), garbage(rng))


@cache_exercise
def test_unwritten_slots_hold_nan(impl, rng):
    """A slot not written yet must never reach an output, even when it holds NaN."""
    fn = impl.load(TOPIC).decode_with_cache
    attn = layer(rng, 6, 2)
    run_and_check(fn, attn, tokens(rng, 2, 3), tokens(rng, 2, 5), lambda shape: torch.full(shape, float("nan"), dtype=torch.float64))


@cache_exercise
def test_float32_up_to_the_last_slot(impl, rng):
    fn = impl.load(TOPIC).decode_with_cache
    attn = layer(rng, dtype=torch.float32)
    run_and_check(fn, attn, tokens(rng, 2, S_MAX - 4, torch.float32), tokens(rng, 2, 4, torch.float32), garbage(rng))

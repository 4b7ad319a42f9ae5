"""The PyTorch reference attention (llm_course/backends/torch_ops/attention.py).

Checked against two independent formulations: an explicit float64 loop over
batch, heads and queries written from the definition, and PyTorch's own
``scaled_dot_product_attention``. Tolerances, for results compared with float64:
float32 1e-5, float16 2e-3, bfloat16 2e-2 (``llm_course.grading.checks``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.backends.torch_ops.attention import attention, build_mask
from llm_course.device import get_device
from llm_course.grading.checks import assert_close

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def loop_attention(q, k, v, *, causal=True, scale=None, window=None, key_padding_mask=None):
    """Attention from its definition, one query at a time, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1 / math.sqrt(D) if scale is None else scale
    rows = []
    for b in range(B):
        for h in range(Hq):
            kv = h // G
            for i in range(T):
                pos = i + S - T  # the query's position among the keys
                visible = [
                    j for j in range(S)
                    if (not causal or j <= pos)
                    and (window is None or pos - j < window)
                    and (key_padding_mask is None or bool(key_padding_mask[b, j]))
                ]  # fmt: skip
                if not visible:
                    rows.append(torch.zeros(v.shape[-1], dtype=torch.float64, device=q.device))
                    continue
                idx = torch.tensor(visible, device=q.device)
                s = (k[b, kv, idx] @ q[b, h, i]) * scale  # (n,)
                p = torch.softmax(s, dim=0)
                rows.append(p @ v[b, kv, idx])
    return torch.stack(rows).view(B, Hq, T, v.shape[-1])


def sdpa(q, k, v, mask, scale=None):
    """torch's scaled_dot_product_attention with the same mask, heads repeated for GQA."""
    G = q.shape[1] // k.shape[1]
    if TORCH_VERSION >= (2, 5):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=G > 1)
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def make_qkv(B, Hq, Hkv, T, S, D, dtype=torch.float64, device="cpu", requires_grad=False):
    # unequal head values (offsets per head), so that a wrong head mapping shows
    q = torch.randn(B, Hq, T, D, dtype=torch.float64) + torch.arange(Hq, dtype=torch.float64).view(1, Hq, 1, 1) * 0.3
    k = torch.randn(B, Hkv, S, D, dtype=torch.float64)
    v = torch.randn(B, Hkv, S, D, dtype=torch.float64) + torch.arange(Hkv, dtype=torch.float64).view(1, Hkv, 1, 1)
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v)]


CASES = [
    # B, Hq, Hkv, T, S, causal, window
    (2, 3, 3, 7, 7, True, None),
    (1, 4, 2, 5, 5, False, None),
    (2, 8, 2, 9, 9, True, None),
    (1, 8, 1, 6, 6, True, None),  # multi-query
    (2, 8, 8, 13, 13, True, 4),  # sliding window
    (1, 4, 1, 3, 11, True, None),  # KV cache: 3 new queries after 8 cached keys
    (2, 6, 3, 1, 9, True, 3),  # one query (decoding) with a window
    (1, 2, 2, 5, 5, False, 2),  # window without causal: future keys stay visible
]


@pytest.mark.parametrize("B,Hq,Hkv,T,S,causal,window", CASES)
def test_matches_loop_definition(B, Hq, Hkv, T, S, causal, window):
    q, k, v = make_qkv(B, Hq, Hkv, T, S, 16)
    out = attention(q, k, v, causal=causal, window=window)
    assert_close(out, loop_attention(q, k, v, causal=causal, window=window), hint="attention differs from its definition")


@pytest.mark.parametrize("B,Hq,Hkv,T,S,causal,window", CASES)
def test_matches_sdpa(B, Hq, Hkv, T, S, causal, window):
    q, k, v = make_qkv(B, Hq, Hkv, T, S, 24)
    mask = build_mask(T, S, causal, window)
    scale = 0.37
    out = attention(q, k, v, causal=causal, window=window, scale=scale)
    assert_close(out, sdpa(q, k, v, mask, scale), hint="attention differs from scaled_dot_product_attention")


def test_padding_and_fully_masked_rows_give_zero():
    q, k, v = make_qkv(3, 4, 2, 5, 8, 8)
    pad = torch.ones(3, 8, dtype=torch.bool)
    pad[0, :4] = False  # left padding: query 0 (at position 3) sees no real key
    pad[1, 6:] = False  # right padding
    pad[2, :] = False  # nothing at all
    out = attention(q, k, v, key_padding_mask=pad)
    ref = loop_attention(q, k, v, key_padding_mask=pad)
    assert_close(out, ref, hint="attention with padding differs from its definition")
    assert torch.isfinite(out).all()
    assert (out[2] == 0).all() and (out[0, :, 0] == 0).all()


def test_window_of_one_sees_only_itself():
    q, k, v = make_qkv(1, 2, 2, 6, 6, 8)
    out = attention(q, k, v, window=1)
    assert_close(out, v.double(), hint="with window=1 each query sees only its own key")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    q, k, v = make_qkv(2, 4, 2, 9, 9, 32, dtype=dtype)
    out = attention(q, k, v)
    assert out.dtype == dtype
    assert_close(out, loop_attention(q, k, v), hint=f"attention in {dtype} is off")


def test_extreme_scores_are_stable():
    q, k, v = make_qkv(1, 2, 1, 5, 5, 8)
    out = attention(q * 1e3, k * 1e3, v)  # scores around 1e6: a naive exp overflows
    assert torch.isfinite(out).all()
    assert_close(out, loop_attention(q * 1e3, k * 1e3, v), hint="attention overflows on large scores")


@pytest.mark.parametrize("Hq,Hkv,T,S,window", [(4, 2, 5, 7, None), (3, 1, 6, 6, 3), (2, 2, 4, 4, None)])
def test_gradients_match_loop(Hq, Hkv, T, S, window):
    q, k, v = make_qkv(2, Hq, Hkv, T, S, 8, requires_grad=True)
    pad = torch.ones(2, S, dtype=torch.bool)
    pad[1, :2] = False
    dout = torch.randn(2, Hq, T, 8, dtype=torch.float64)
    grads = torch.autograd.grad(attention(q, k, v, window=window, key_padding_mask=pad), (q, k, v), dout)
    ref = torch.autograd.grad(loop_attention(q, k, v, window=window, key_padding_mask=pad), (q, k, v), dout)
    for name, g, r in zip("qkv", grads, ref):
        assert torch.isfinite(g).all(), f"d{name} has NaN"
        assert_close(g, r, hint=f"d{name} differs from the loop's", what=f"d{name}")


def test_gradcheck_with_fully_masked_row():
    q, k, v = make_qkv(1, 2, 1, 3, 4, 4, requires_grad=True)
    pad = torch.tensor([[False, False, True, True]])  # query 0 (position 1) sees nothing
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, key_padding_mask=pad), (q, k, v))


def test_dropout():
    q, k, v = make_qkv(1, 2, 1, 4, 4, 8)
    assert torch.equal(attention(q, k, v, dropout_p=0.0), attention(q, k, v))
    assert (attention(q, k, v, dropout_p=1.0) == 0).all()
    # in expectation dropout changes nothing (the kept probabilities are scaled by 1/(1-p))
    n = 4000
    qs, ks, vs = (t.expand(n, *t.shape[1:]) for t in (q, k, v))
    mean = attention(qs, ks, vs, dropout_p=0.3).mean(dim=0, keepdim=True)
    assert_close(mean, attention(q, k, v), hint="dropout is biased", atol=0.1, rtol=0)


def test_build_mask_pictures():
    causal = build_mask(3, 5, causal=True)
    assert causal.shape == (1, 1, 3, 5)
    assert causal[0, 0].int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    window = build_mask(4, 4, causal=True, window=2)
    assert window[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    pad = build_mask(2, 2, causal=False, key_padding_mask=torch.tensor([[True, False], [True, True]]))
    assert pad.shape == (2, 1, 2, 2) and pad[0, 0].int().tolist() == [[1, 0], [1, 0]]


def test_gqa_does_not_copy_kv():
    q, k, v = make_qkv(1, 8, 1, 4, 4, 8)
    out = attention(q, k.expand(1, 1, 4, 8), v)  # works on a broadcast view too
    assert_close(out, loop_attention(q, k, v), hint="attention on an expanded k differs")


def test_clear_errors():
    q, k, v = make_qkv(1, 6, 4, 3, 3, 8)
    with pytest.raises(ValueError, match="must divide"):
        attention(q, k, v)
    q, k, v = make_qkv(1, 2, 2, 3, 3, 8)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, k, v, key_padding_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="head sizes"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, window=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_real_sizes(dtype):
    dev = get_device()
    torch.manual_seed(0)
    q, k, v = make_qkv(2, 28, 4, 1000, 1000, 128, dtype=dtype, device=dev)
    out = attention(q, k, v, window=700)
    ref = sdpa(q.double(), k.double(), v.double(), build_mask(1000, 1000, True, 700, device=dev))
    assert_close(out, ref, hint=f"attention on the GPU in {dtype} is off", dtype=dtype if dtype != torch.float32 else "tf32")

"""Every op on every backend under bad, degenerate and hostile input: tables of op x backend.

* **bad input**: integer or bool tensors, a weight on the ``meta`` device, mixed dtypes, a
  bias or weight of the wrong shape, a ``(1, S)`` padding mask, a negative ``dropout_p``, a
  non-positive ``scale``... Each one is refused by both backends, with the same error type
  and a message that starts with the op's name and names the argument (the op's shared
  check in ``llm_course/backends/checks.py`` runs before any backend).
* **empty shapes**: rows of no element, no rows, zero-length sequences, ``K = 0``: both
  backends give the same, right result (of the right shape), forward and backward.
* **double backward**: a Triton backward is a kernel, not a graph; differentiating it again
  must either raise or give torch's answer, never silently drop the second-order terms.
* **NaN in keys a query cannot see** (causal future, outside the window, padding, unwritten
  cache slots): the queries that cannot see them stay finite and equal to a run without
  the NaN, forward and dQ (and every gradient when only padding hides the NaN); the
  queries that do see them get NaN.

A new op must add its rows to ``BAD`` and ``EMPTY``: a test checks the tables cover every
declared op (``DOUBLE_BACKWARD`` runs the samples of ``op_samples.py`` for every op).
"""

from __future__ import annotations

import pytest
import torch
from op_samples import SAMPLES

from llm_course import ops
from llm_course.backends import declared_ops, use_backend
from llm_course.backends.torch_ops.attention import build_mask
from llm_course.device import get_device

BACKENDS = ["torch", "triton"]
OPS = sorted(declared_ops())


def _dev():
    return get_device()


def _r(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(_dev())


def _ints(*shape):
    return torch.arange(1, 1 + torch.Size(shape).numel()).reshape(shape).to(_dev())


def _meta(*shape):
    return torch.empty(*shape, device="meta")


def _rope(T, D):
    angles = torch.arange(T).float()[:, None] * torch.linspace(0.1, 1.0, D // 2)[None, :]
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos().to(_dev()), angles.sin().to(_dev())


def _qkv(B=1, H=2, T=16, S=16, D=16, dtypes=(torch.float32,) * 3):
    return tuple(_r(B, H, n, D, dtype=dt, seed=i) for i, (n, dt) in enumerate(zip((T, S, S), dtypes)))


def _decode(B=2, Hq=4, Hkv=2, S=24, D=16, dtypes=(torch.float32,) * 3, seqlens=None):
    """q (B, Hq, 1, D), k_cache and v_cache (B, Hkv, S, D), cache_seqlens (B,) int32: ops.decode_attention's arguments."""
    q = _r(B, Hq, 1, D, dtype=dtypes[0])
    k, v = (_r(B, Hkv, S, D, dtype=dt, seed=i + 1) for i, dt in enumerate(dtypes[1:]))
    lengths = torch.tensor(seqlens if seqlens is not None else [min(S, 3 + 5 * b) for b in range(B)], dtype=torch.int32)
    return q, k, v, lengths.to(_dev())


# --- 1. bad input: (op, case, args builder, error type, message pattern) ---------------------------
#
# The pattern starts with the op's name and names the argument; both backends must raise
# this error (the shared check), before any kernel runs.

BAD = [
    ("add", "int x", lambda: ((_ints(2, 3), _ints(2, 3)), {}), TypeError, r"^add: x has dtype int64"),
    ("add", "bool y", lambda: ((_r(2, 3), _ints(2, 3) > 2), {}), TypeError, r"^add: y has dtype bool"),
    ("add", "mixed dtypes", lambda: ((_r(2, 3), _r(2, 3, dtype=torch.float16)), {}), TypeError, r"^add: inputs have different dtypes \(x float32, y float16\)"),
    ("add", "meta y", lambda: ((_r(2, 3), _meta(2, 3)), {}), ValueError, r"^add: y is on the meta device"),
    ("add", "broadcast", lambda: ((_r(2, 3), _r(3)), {}), ValueError, r"^add: inputs must have the same shape"),
    ("softmax", "int x", lambda: ((_ints(1, 3),), {}), TypeError, r"^softmax: x has dtype int64"),
    ("softmax", "bool x", lambda: ((_ints(2, 3) > 2,), {}), TypeError, r"^softmax: x has dtype bool"),
    ("softmax", "meta x", lambda: ((_meta(2, 3),), {}), ValueError, r"^softmax: x is on the meta device"),
    ("softmax", "0-d x", lambda: ((_r(),), {}), ValueError, r"^softmax: x must have at least one dimension"),
    ("rms_norm", "int x", lambda: ((_ints(2, 4), _r(4)), {}), TypeError, r"^rms_norm: x has dtype int64"),
    ("rms_norm", "int weight", lambda: ((_r(2, 4), _ints(4)), {}), TypeError, r"^rms_norm: weight has dtype int64"),
    ("rms_norm", "meta weight", lambda: ((_r(2, 4), _meta(4)), {}), ValueError, r"^rms_norm: weight is on the meta device"),
    ("rms_norm", "weight (1,)", lambda: ((_r(2, 4), _r(1)), {}), ValueError, r"^rms_norm: weight has shape \(1,\), expected \(4,\)"),
    ("rms_norm", "weight 0-d", lambda: ((_r(2, 4), _r()), {}), ValueError, r"^rms_norm: weight has shape \(\), expected \(4,\)"),
    ("rms_norm", "eps None", lambda: ((_r(2, 4), _r(4), None), {}), ValueError, r"^rms_norm: eps must be"),
    ("rms_norm", "eps < 0", lambda: ((_r(2, 4), _r(4), -1e-6), {}), ValueError, r"^rms_norm: eps must be"),
    ("layer_norm", "int x", lambda: ((_ints(2, 4), _r(4), _r(4)), {}), TypeError, r"^layer_norm: x has dtype int64"),
    ("layer_norm", "bias (T, N)", lambda: ((_r(2, 4), _r(4), _r(2, 4)), {}), ValueError, r"^layer_norm: bias has shape \(2, 4\), expected \(4,\)"),
    ("layer_norm", "bias (1,)", lambda: ((_r(2, 4), _r(4), _r(1)), {}), ValueError, r"^layer_norm: bias has shape \(1,\), expected \(4,\)"),
    ("layer_norm", "bias 0-d", lambda: ((_r(2, 4), _r(4), _r()), {}), ValueError, r"^layer_norm: bias has shape \(\), expected \(4,\)"),
    ("layer_norm", "meta bias", lambda: ((_r(2, 4), _r(4), _meta(4)), {}), ValueError, r"^layer_norm: bias is on the meta device"),
    ("layer_norm", "eps NaN", lambda: ((_r(2, 4), _r(4), _r(4), float("nan")), {}), ValueError, r"^layer_norm: eps must be"),
    ("matmul", "int a", lambda: ((_ints(2, 3), _r(3, 4)), {}), TypeError, r"^matmul: a has dtype int64"),
    ("matmul", "mixed dtypes", lambda: ((_r(2, 3), _r(3, 4, dtype=torch.float16)), {}), TypeError, r"^matmul: inputs have different dtypes"),
    ("matmul", "meta b", lambda: ((_r(2, 3), _meta(3, 4)), {}), ValueError, r"^matmul: b is on the meta device"),
    ("matmul", "inner dims", lambda: ((_r(2, 3), _r(4, 4)), {}), ValueError, r"^matmul: inner dimensions differ"),
    ("linear", "int x", lambda: ((_ints(2, 3), _r(4, 3)), {}), TypeError, r"^linear: x has dtype int64"),
    ("linear", "meta weight", lambda: ((_r(2, 3), _meta(4, 3)), {}), ValueError, r"^linear: weight is on the meta device"),
    ("linear", "bias (T, N)", lambda: ((_r(2, 3), _r(4, 3), _r(2, 4)), {}), ValueError, r"^linear: bias has shape \(2, 4\), expected \(4,\)"),
    ("linear", "bias (1,)", lambda: ((_r(2, 3), _r(4, 3), _r(1)), {}), ValueError, r"^linear: bias has shape \(1,\), expected \(4,\)"),
    ("linear", "bias 0-d", lambda: ((_r(2, 3), _r(4, 3), _r()), {}), ValueError, r"^linear: bias has shape \(\), expected \(4,\)"),
    ("linear", "mixed dtypes", lambda: ((_r(2, 3, dtype=torch.float16), _r(4, 3)), {}), TypeError, r"^linear: inputs have different dtypes \(x float16, weight float32\)"),
    ("linear", "features", lambda: ((_r(2, 3), _r(4, 5)), {}), ValueError, r"^linear: x has 3 features"),
    ("apply_rope", "int x", lambda: ((_ints(1, 2, 4, 8), *_rope(4, 8)), {}), TypeError, r"^apply_rope: x has dtype int64"),
    ("apply_rope", "int cos", lambda: ((_r(1, 2, 4, 8), _ints(4, 8), _rope(4, 8)[1]), {}), TypeError, r"^apply_rope: cos has dtype int64"),
    ("apply_rope", "meta x", lambda: ((_meta(1, 2, 4, 8), *_rope(4, 8)), {}), ValueError, r"^apply_rope: x is on the meta device"),
    ("apply_rope", "odd D", lambda: ((_r(1, 2, 4, 7), _r(4, 7), _r(4, 7)), {}), ValueError, r"^apply_rope: the head size D=7 must be even"),
    ("attention", "int q", lambda: ((_ints(1, 2, 16, 16), *_qkv()[1:]), {}), TypeError, r"^attention: q has dtype int64"),
    ("attention", "mixed dtypes", lambda: (_qkv(dtypes=(torch.float32, torch.float16, torch.float32)), {}), TypeError, r"^attention: inputs have different dtypes \(q float32, k float16, v float32\)"),
    ("attention", "meta v", lambda: ((*_qkv()[:2], _meta(1, 2, 16, 16)), {}), ValueError, r"^attention: v is on the meta device"),
    ("attention", "mask (1, S)", lambda: (_qkv(B=2), {"key_padding_mask": torch.ones(1, 16, dtype=torch.bool, device=_dev())}), ValueError, r"^attention: key_padding_mask must be a bool tensor of shape \(B, S\) = \(2, 16\)"),
    ("attention", "float mask", lambda: (_qkv(), {"key_padding_mask": torch.ones(1, 16, device=_dev())}), ValueError, r"^attention: key_padding_mask must be a bool tensor"),
    ("attention", "dropout_p < 0", lambda: (_qkv(), {"dropout_p": -0.1}), ValueError, r"^attention: dropout_p must be a number in \[0, 1\)"),
    ("attention", "dropout_p = 1", lambda: (_qkv(), {"dropout_p": 1.0}), ValueError, r"^attention: dropout_p must be a number in \[0, 1\)"),
    ("attention", "scale 0", lambda: (_qkv(), {"scale": 0.0}), ValueError, r"^attention: scale must be a positive number"),
    ("attention", "scale < 0", lambda: (_qkv(), {"scale": -0.25}), ValueError, r"^attention: scale must be a positive number"),
    ("attention", "scale NaN", lambda: (_qkv(), {"scale": float("nan")}), ValueError, r"^attention: scale must be a positive number"),
    ("attention", "window 0", lambda: (_qkv(), {"window": 0}), ValueError, r"^attention: window must be a positive int"),
    ("attention", "kv heads", lambda: ((_r(1, 3, 16, 16), *_qkv()[1:]), {}), ValueError, r"^attention: the number of kv heads \(2\) must divide"),
    ("qkv_attention", "int qkv", lambda: ((_ints(1, 4, 96), 2), {}), TypeError, r"^qkv_attention: qkv has dtype int64"),
    ("qkv_attention", "qkv 4-D", lambda: ((_r(1, 2, 4, 96), 2), {}), ValueError, r"^qkv_attention: qkv must have 3 dimensions, got shape \(1, 2, 4, 96\)"),
    ("qkv_attention", "meta qkv", lambda: ((_meta(1, 4, 96), 2), {}), ValueError, r"^qkv_attention: qkv is on the meta device"),
    ("qkv_attention", "3C not split", lambda: ((_r(1, 4, 100), 2), {}), ValueError, r"^qkv_attention: qkv has shape \(1, 4, 100\); its last dimension must be 3 \* num_heads \* head_dim"),
    ("qkv_attention", "num_heads 0", lambda: ((_r(1, 4, 96), 0), {}), ValueError, r"^qkv_attention: num_heads must be a positive int, got 0"),
    ("qkv_attention", "mask (1, T)", lambda: ((_r(2, 4, 96), 2), {"key_padding_mask": torch.ones(1, 4, dtype=torch.bool, device=_dev())}), ValueError, r"^qkv_attention: key_padding_mask must be a bool tensor of shape \(B, T\) = \(2, 4\)"),
    ("qkv_attention", "dropout_p = 1", lambda: ((_r(1, 4, 96), 2), {"dropout_p": 1.0}), ValueError, r"^qkv_attention: dropout_p must be a number in \[0, 1\)"),
    ("decode_attention", "int q", lambda: ((_ints(2, 4, 1, 16), *_decode()[1:]), {}), TypeError, r"^decode_attention: q has dtype int64"),
    ("decode_attention", "mixed dtypes", lambda: (_decode(dtypes=(torch.float32, torch.float16, torch.float32)), {}), TypeError, r"^decode_attention: inputs have different dtypes \(q float32, k_cache float16, v_cache float32\)"),
    ("decode_attention", "meta v_cache", lambda: ((*_decode()[:2], _meta(2, 2, 24, 16), _decode()[3]), {}), ValueError, r"^decode_attention: v_cache is on the meta device"),
    ("decode_attention", "two queries", lambda: ((_r(2, 4, 2, 16), *_decode()[1:]), {}), ValueError, r"^decode_attention: q must hold one query per head, \(B, Hq, 1, D\)"),
    ("decode_attention", "float seqlens", lambda: ((*_decode()[:3], _r(2)), {}), ValueError, r"^decode_attention: cache_seqlens must be an int32 or int64 tensor of shape \(B,\) = \(2,\), got float32"),
    ("decode_attention", "seqlens (B, 1)", lambda: ((*_decode()[:3], _ints(2, 1)), {}), ValueError, r"^decode_attention: cache_seqlens must be an int32 or int64 tensor of shape \(B,\)"),
    ("decode_attention", "seqlens not a tensor", lambda: ((*_decode()[:3], [3, 4]), {}), TypeError, r"^decode_attention: cache_seqlens must be a torch.Tensor"),
    ("decode_attention", "kv heads", lambda: ((_r(2, 3, 1, 16), *_decode()[1:]), {}), ValueError, r"^decode_attention: the number of kv heads \(2\) must divide"),
    ("decode_attention", "k, v shapes", lambda: ((*_decode()[:2], _r(2, 2, 20, 16), _decode()[3]), {}), ValueError, r"^decode_attention: k_cache and v_cache must have the same shape"),
    ("decode_attention", "head sizes", lambda: ((_r(2, 4, 1, 8), *_decode()[1:]), {}), ValueError, r"^decode_attention: q \(2, 4, 1, 8\) and k_cache \(2, 2, 24, 16\) must agree"),
    ("decode_attention", "window 0", lambda: (_decode(), {"window": 0}), ValueError, r"^decode_attention: window must be a positive int"),
    ("decode_attention", "scale < 0", lambda: (_decode(), {"scale": -1.0}), ValueError, r"^decode_attention: scale must be a positive number"),
    ("decode_attention", "mask (1, S)", lambda: (_decode(), {"key_padding_mask": torch.ones(1, 24, dtype=torch.bool, device=_dev())}), ValueError, r"^decode_attention: key_padding_mask must be a bool tensor of shape \(B, S_max\) = \(2, 24\)"),
    ("gelu_tanh", "int x", lambda: ((_ints(2, 3),), {}), TypeError, r"^gelu_tanh: x has dtype int64"),
    ("gelu_tanh", "meta x", lambda: ((_meta(2, 3),), {}), ValueError, r"^gelu_tanh: x is on the meta device"),
    ("silu_mul", "int up", lambda: ((_r(2, 3), _ints(2, 3)), {}), TypeError, r"^silu_mul: up has dtype int64"),
    ("silu_mul", "mixed dtypes", lambda: ((_r(2, 3), _r(2, 3, dtype=torch.float16)), {}), TypeError, r"^silu_mul: inputs have different dtypes"),
    ("embedding", "float ids", lambda: ((_r(2, 3), _r(5, 4)), {}), TypeError, r"^embedding: ids must be int64 or int32"),
    ("embedding", "int weight", lambda: ((_ints(2, 3) % 5, _ints(5, 4)), {}), TypeError, r"^embedding: weight has dtype int64"),
    ("embedding", "meta weight", lambda: ((_ints(2, 3) % 5, _meta(5, 4)), {}), ValueError, r"^embedding: weight is on the meta device"),
    ("cross_entropy", "float targets", lambda: ((_r(3, 5), _r(3)), {}), TypeError, r"^cross_entropy: targets must be int64 or int32"),
    ("cross_entropy", "int logits", lambda: ((_ints(3, 5), _ints(3) % 5), {}), TypeError, r"^cross_entropy: logits has dtype int64"),
    ("cross_entropy", "meta logits", lambda: ((_meta(3, 5), _ints(3) % 5), {}), ValueError, r"^cross_entropy: logits is on the meta device"),
    ("cross_entropy", "3-d logits", lambda: ((_r(2, 3, 5), _ints(2, 3) % 5), {}), ValueError, r"^cross_entropy: logits must have 2 dimensions"),
    ("cross_entropy", "targets (N, 1)", lambda: ((_r(3, 5), _ints(3, 1) % 5), {}), ValueError, r"^cross_entropy: targets has shape \(3, 1\), expected \(3,\)"),
    ("add_layer_norm", "int h", lambda: ((_r(2, 4), _ints(2, 4), _r(4), _r(4)), {}), TypeError, r"^add_layer_norm: h has dtype int64"),
    ("add_layer_norm", "h broadcast", lambda: ((_r(2, 4), _r(4), _r(4), _r(4)), {}), ValueError, r"^add_layer_norm: inputs must have the same shape, got x \(2, 4\), h \(4,\)"),
    ("add_layer_norm", "bias (1,)", lambda: ((_r(2, 4), _r(2, 4), _r(4), _r(1)), {}), ValueError, r"^add_layer_norm: bias has shape \(1,\), expected \(4,\)"),
    ("add_rms_norm", "weight (3,)", lambda: ((_r(2, 4), _r(2, 4), _r(3)), {}), ValueError, r"^add_rms_norm: weight has shape \(3,\), expected \(4,\)"),
    ("add_rms_norm", "meta h", lambda: ((_r(2, 4), _meta(2, 4), _r(4)), {}), ValueError, r"^add_rms_norm: h is on the meta device"),
    ("add_rms_norm", "eps NaN", lambda: ((_r(2, 4), _r(2, 4), _r(4), float("nan")), {}), ValueError, r"^add_rms_norm: eps must be"),
    ("cross_entropy", "V = 0", lambda: ((_r(3, 0), _ints(3) % 5), {}), ValueError, r"^cross_entropy: logits has shape \(3, 0\): no class"),
    ("cross_entropy", "reduction none", lambda: ((_r(3, 5), _ints(3) % 5), {"reduction": "none"}), ValueError, r"^cross_entropy: reduction must be 'mean' or 'sum'"),
    ("cross_entropy", "ignore_index float", lambda: ((_r(3, 5), _ints(3) % 5), {"ignore_index": -100.0}), TypeError, r"^cross_entropy: ignore_index must be an int"),
    ("fused_linear_cross_entropy", "mixed dtypes", lambda: ((_r(3, 4), _r(5, 4, dtype=torch.float16), _ints(3) % 5), {}), TypeError, r"^fused_linear_cross_entropy: inputs have different dtypes \(hidden float32, weight float16\)"),
    ("fused_linear_cross_entropy", "features", lambda: ((_r(3, 4), _r(5, 6), _ints(3) % 5), {}), ValueError, r"^fused_linear_cross_entropy: hidden has 4 features"),
    ("fused_linear_cross_entropy", "bias (1,)", lambda: ((_r(3, 4), _r(5, 4), _ints(3) % 5, _r(1)), {}), ValueError, r"^fused_linear_cross_entropy: bias has shape \(1,\), expected \(5,\)"),
    ("fused_linear_cross_entropy", "meta weight", lambda: ((_r(3, 4), _meta(5, 4), _ints(3) % 5), {}), ValueError, r"^fused_linear_cross_entropy: weight is on the meta device"),
    ("fused_linear_cross_entropy", "targets (2,)", lambda: ((_r(3, 4), _r(5, 4), _ints(2) % 5), {}), ValueError, r"^fused_linear_cross_entropy: targets has shape \(2,\), expected \(3,\)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "case", "build", "error", "pattern"), BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD])
def test_bad_input_is_refused_by_name(backend, name, case, build, error, pattern):
    args, kwargs = build()
    with use_backend(backend), pytest.raises(error, match=pattern):
        getattr(ops, name)(*args, **kwargs)


def test_bad_input_table_covers_every_op():
    missing = set(OPS) - {row[0] for row in BAD}
    assert not missing, f"ops with no row in BAD: {sorted(missing)}"


# --- 2. empty and degenerate shapes --------------------------------------------------------------
#
# (op, case, args builder, the expected result or None when only the shape is known)


def _linear_k0():
    return (_r(3, 0), _r(4, 0), _r(4, seed=1)), {}


EMPTY = [
    ("add", "no elements", lambda: ((_r(0, 5), _r(0, 5)), {}), (0, 5)),
    ("softmax", "rows of 0", lambda: ((_r(3, 0),), {}), (3, 0)),
    ("softmax", "no rows", lambda: ((_r(0, 5),), {}), (0, 5)),
    ("rms_norm", "rows of 0", lambda: ((_r(3, 0), _r(0)), {}), (3, 0)),
    ("rms_norm", "no rows", lambda: ((_r(0, 8), _r(8)), {}), (0, 8)),
    ("layer_norm", "rows of 0", lambda: ((_r(3, 0), _r(0), _r(0)), {}), (3, 0)),
    ("layer_norm", "no rows", lambda: ((_r(2, 0, 8), _r(8), _r(8)), {}), (2, 0, 8)),
    ("add_layer_norm", "rows of 0", lambda: ((_r(3, 0), _r(3, 0), _r(0), _r(0)), {}), (2, 3, 0)),
    ("add_layer_norm", "no rows", lambda: ((_r(2, 0, 8), _r(2, 0, 8), _r(8), _r(8)), {}), (2, 2, 0, 8)),
    ("add_rms_norm", "rows of 0", lambda: ((_r(3, 0), _r(3, 0), _r(0)), {}), (2, 3, 0)),
    ("add_rms_norm", "no rows", lambda: ((_r(0, 8), _r(0, 8), _r(8)), {}), (2, 0, 8)),
    ("matmul", "M = 0", lambda: ((_r(0, 4), _r(4, 5)), {}), (0, 5)),
    ("matmul", "K = 0", lambda: ((_r(3, 0), _r(0, 5)), {}), (3, 5)),
    ("matmul", "N = 0", lambda: ((_r(3, 4), _r(4, 0)), {}), (3, 0)),
    ("linear", "K = 0 (Linear(0, N))", _linear_k0, (3, 4)),
    ("linear", "no rows", lambda: ((_r(2, 0, 4), _r(5, 4), _r(5)), {}), (2, 0, 5)),
    ("apply_rope", "T = 0", lambda: ((_r(1, 2, 0, 8), *_rope(0, 8)), {}), (1, 2, 0, 8)),
    ("apply_rope", "B = 0", lambda: ((_r(0, 2, 4, 8), *_rope(4, 8)), {}), (0, 2, 4, 8)),
    ("attention", "T = S = 0", lambda: (_qkv(T=0, S=0), {}), (1, 2, 0, 16)),
    ("attention", "S = 0", lambda: (_qkv(T=3, S=0), {"causal": False}), (1, 2, 3, 16)),
    ("attention", "S = 0 causal", lambda: (_qkv(T=3, S=0), {}), (1, 2, 3, 16)),
    ("attention", "T = 0", lambda: (_qkv(T=0, S=5), {}), (1, 2, 0, 16)),
    ("attention", "B = 0", lambda: (_qkv(B=0), {}), (0, 2, 16, 16)),
    ("qkv_attention", "T = 0", lambda: ((_r(2, 0, 96), 2), {}), (2, 0, 32)),
    ("qkv_attention", "B = 0", lambda: ((_r(0, 5, 96), 2), {}), (0, 5, 32)),
    ("decode_attention", "S_max = 0", lambda: (_decode(S=0, seqlens=[0, 0]), {}), (2, 4, 1, 16)),
    ("decode_attention", "no slot filled", lambda: (_decode(seqlens=[0, 0]), {"window": 4}), (2, 4, 1, 16)),
    ("decode_attention", "B = 0", lambda: (_decode(B=0), {}), (0, 4, 1, 16)),
    ("gelu_tanh", "no elements", lambda: ((_r(0, 3),), {}), (0, 3)),
    ("silu_mul", "no elements", lambda: ((_r(4, 0), _r(4, 0)), {}), (4, 0)),
    ("embedding", "no ids", lambda: ((torch.zeros(0, dtype=torch.long, device=_dev()), _r(5, 4)), {}), (0, 4)),
    ("cross_entropy", "no rows", lambda: ((_r(0, 5), _ints(0)), {}), ()),
    ("cross_entropy", "every target ignored", lambda: ((_r(3, 5), torch.full((3,), -100, device=_dev())), {}), ()),
    ("cross_entropy", "no rows, sum", lambda: ((_r(0, 5), _ints(0)), {"reduction": "sum"}), ()),
    ("fused_linear_cross_entropy", "no rows", lambda: ((_r(0, 4), _r(5, 4), _ints(0), _r(5)), {}), ()),
    ("fused_linear_cross_entropy", "every target ignored", lambda: ((_r(3, 4), _r(5, 4), torch.full((3,), -100, device=_dev())), {}), ()),
    ("fused_linear_cross_entropy", "C = 0", lambda: ((_r(3, 0), _r(5, 0), _ints(3) % 5, _r(5)), {}), ()),
]


def _float_tensors(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


def _stacked(y):
    """An op's result as one tensor: the outputs of a two-output op (add_layer_norm's sum and norm) stacked."""
    return torch.stack([t.to(y[0].dtype) for t in y]) if isinstance(y, tuple) else y


def _run(name, backend, args, kwargs, grad=True):
    """The op's result and the gradients of sum(result * g) for its float tensor inputs (g fixed)."""
    args = tuple(a.detach().clone().requires_grad_(grad) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a for a in args)  # fmt: skip
    if name == "apply_rope":  # cos and sin are tables: no gradient (the Triton kernel refuses one)
        args = (args[0], *(t.detach() for t in args[1:]))
    with use_backend(backend):
        y = _stacked(getattr(ops, name)(*args, **kwargs))
    inputs = [a for a in _float_tensors(args) if a.requires_grad]
    if not grad or not inputs:
        return y.detach(), []
    g = torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape).to(y.dtype)
    grads = torch.autograd.grad((y * g).sum(), inputs, allow_unused=True)
    return y.detach(), [torch.zeros_like(a) if d is None else d for a, d in zip(inputs, grads)]


@pytest.mark.parametrize(("name", "case", "build", "shape"), EMPTY, ids=[f"{e[0]}-{e[1]}" for e in EMPTY])
def test_empty_shapes_agree_on_both_backends(name, case, build, shape):
    args, kwargs = build()
    results = {b: _run(name, b, args, kwargs) for b in BACKENDS}
    for backend, (y, grads) in results.items():
        assert tuple(y.shape) == shape, f"{backend} {name} ({case}): shape {tuple(y.shape)}, expected {shape}"
        assert torch.isfinite(y).all(), f"{backend} {name} ({case}) gave a non-finite value"
        for a, d in zip([a for a in _float_tensors(args)], grads):
            assert d.shape == a.shape and torch.isfinite(d).all(), f"{backend} {name} ({case}): bad gradient"
    (y_t, g_t), (y_k, g_k) = results["torch"], results["triton"]
    torch.testing.assert_close(y_k, y_t, msg=f"{name} ({case}): the backends disagree")
    for a, b in zip(g_k, g_t):
        torch.testing.assert_close(a, b, msg=f"{name} ({case}): the backends' gradients disagree")


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_with_no_input_features_is_the_bias(backend):
    (x, w, b), _ = _linear_k0()
    with use_backend(backend):
        y = ops.linear(x, w, b)
        y0 = ops.linear(x, w)
    torch.testing.assert_close(y, b.expand(3, 4))
    torch.testing.assert_close(y0, torch.zeros(3, 4, device=x.device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_with_no_keys_gives_zeros(backend):
    q, k, v = _qkv(T=3, S=0)
    with use_backend(backend):
        assert torch.equal(ops.attention(q, k, v, causal=False), torch.zeros_like(q))


def test_empty_table_covers_every_op():
    missing = set(OPS) - {row[0] for row in EMPTY}
    assert not missing, f"ops with no row in EMPTY: {sorted(missing)}"


# --- 3. double backward -------------------------------------------------------------------------


def _double_backward(name, backend):
    """d/d(inputs) of <grad of sum(y**2), r>, through ``.backward()``: needs the op's second derivative."""
    args, kwargs = SAMPLES[name](_dev())
    args = tuple(a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)  # fmt: skip
    if name == "apply_rope":
        args = (args[0], *(t.detach() for t in args[1:]))
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    with use_backend(backend):
        y = _stacked(getattr(ops, name)(*args, **kwargs))
    grads = torch.autograd.grad((y**2).sum(), inputs, create_graph=True)
    second = sum((g * torch.linspace(-1, 1, g.numel()).reshape(g.shape).to(g)).sum() for g in grads)
    second.backward()
    return [a.grad for a in inputs]


@pytest.mark.parametrize("name", OPS)
def test_double_backward_raises_or_is_right(name):
    """On Triton: an error that says the backward is once-differentiable, or exactly torch's answer."""
    expected = _double_backward(name, "torch")
    try:
        got = _double_backward(name, "triton")
    except RuntimeError as e:
        assert "once_differentiable" in str(e), f"triton {name}: unexpected error {e}"
        return
    for a, b in zip(got, expected):
        if b is None:
            assert a is None or not a.any()
        else:
            assert a is not None, f"triton {name}: second-order terms dropped"
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"triton {name}: wrong second derivative")


# --- 4. NaN in keys a query cannot see ----------------------------------------------------------

B, H, D = 2, 2, 16
NAN_CASES = [
    # name, T, S, attention kwargs, poisoned key positions, poisoned tensors, padding mask
    ("causal v", 40, 40, {"causal": True}, [20], "v", None),
    ("causal k", 40, 40, {"causal": True}, [20], "k", None),
    ("causal kv, GQA", 40, 40, {"causal": True}, [21], "kv", None),
    ("causal v, long", 150, 150, {"causal": True}, [100], "v", None),  # past the first rows the repair checks
    ("window v", 40, 40, {"causal": True, "window": 5}, [20], "v", None),
    ("window k", 40, 40, {"causal": True, "window": 5}, [20], "k", None),
    ("padding kv", 24, 40, {"causal": False}, [3, 17, 33], "kv", "pad"),
    ("padding kv, causal", 40, 40, {"causal": True}, [33], "kv", "pad"),
    ("cache tail, decode", 1, 40, {"causal": True}, list(range(30, 40)), "kv", "pad"),
    ("cache tail, prefill", 5, 40, {"causal": True}, list(range(30, 40)), "kv", "pad"),
]


def _attention(backend, q, k, v, kwargs, loss_weight):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with use_backend(backend):
        o = ops.attention(q, k, v, **kwargs)
    (o * loss_weight).sum().backward()
    return o.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("case", "T", "S", "kwargs", "keys", "where", "pad"), NAN_CASES, ids=[c[0] for c in NAN_CASES])
def test_nan_in_hidden_keys_does_not_leak(backend, case, T, S, kwargs, keys, where, pad):
    Hkv = 1 if "GQA" in case else H
    q, k, v = _r(B, H, T, D), _r(B, Hkv, S, D, seed=1), _r(B, Hkv, S, D, seed=2)
    kwargs = dict(kwargs)
    if pad:
        mask = torch.ones(B, S, dtype=torch.bool, device=q.device)
        mask[:, keys] = False
        kwargs["key_padding_mask"] = mask
    k_bad, v_bad = k.clone(), v.clone()
    for t, name in ((k_bad, "k"), (v_bad, "v")):
        if name in where:
            t[:, :, keys] = float("nan")

    visible = build_mask(T, S, kwargs["causal"], kwargs.get("window"), kwargs.get("key_padding_mask"), q.device)
    sees = visible[..., keys].any(-1).expand(B, H, T)  # (B, H, T): the queries that see a poisoned key
    blind = ~sees
    g = _r(B, H, T, D, seed=3) * blind[..., None]  # a loss over the blind queries only

    o, dq, dk, dv = _attention(backend, q, k_bad, v_bad, kwargs, g)
    o_ref, dq_ref, dk_ref, dv_ref = _attention(backend, q, k, v, kwargs, g)

    assert torch.isfinite(o[blind]).all(), f"{backend} {case}: NaN leaked into queries that cannot see it"
    torch.testing.assert_close(o[blind], o_ref[blind], msg=f"{backend} {case}: blind queries changed")
    assert torch.isnan(o[sees]).any(-1).all(), f"{backend} {case}: a query that sees a NaN key is not NaN"
    assert torch.isfinite(dq[blind]).all(), f"{backend} {case}: NaN leaked into dq of blind queries"
    torch.testing.assert_close(dq[blind], dq_ref[blind], msg=f"{backend} {case}: dq of blind queries changed")
    if pad:  # no query sees a poisoned key: every gradient is as without the NaN (0 for padding keys)
        assert not sees.any()
        torch.testing.assert_close(dk, dk_ref, msg=f"{backend} {case}: dk changed")
        torch.testing.assert_close(dv, dv_ref, msg=f"{backend} {case}: dv changed")
        assert not dk[:, :, keys].any() and not dv[:, :, keys].any()

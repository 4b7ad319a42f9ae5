"""Mark each course op in the profile, and count its FLOPs and bytes as it runs.

    from llm_course.profiling.annotate import annotate_ops

    with annotate_ops() as calls, torch.profiler.profile() as prof:
        loss = model(x).sum()
    # every ops.<name>(...) call ran inside a range "llm_course.ops.<name>" of the profile,
    # and calls[i] says what the i-th call was and what it costs (OpCall)

The profiler sees kernels (``sm90_xmma_gemm...``, ``_flash_fwd_kernel``) and PyTorch ops
(``aten::mm``), not the course's ops. While the block runs, each function of
``llm_course.ops`` is replaced by a wrapper that opens a ``torch.profiler.record_function``
range named after the op; every kernel launched inside it belongs to that op. Outside the
block nothing changes: the ops' hot path has no wrapper at all.

The wrapper also computes the op's FLOPs and minimum bytes from its arguments' shapes,
with the formulas of ``llm_course.measure.flops`` (the same conventions: a multiply-add
is 2 FLOPs, every input read once, every output written once), for the forward and for
the backward. The backward's counts are the usual estimates: a matmul's backward is two
matmuls of the same size (``dX = dY W``, ``dW = dY^T X``), attention's is 2.5 times
its forward (FlashAttention's convention), an elementwise op or a norm about twice
its forward FLOPs. Only the outermost op of a nest is marked (an op whose implementation
calls another op counts once).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator

import torch

from llm_course.measure import flops as F

RANGE_PREFIX = "llm_course.ops."


@dataclass
class OpCall:
    """One call of a course op: its name and its estimated cost, forward and backward."""

    op: str
    fwd_flops: float = 0.0
    fwd_bytes: float = 0.0
    bwd_flops: float = 0.0
    bwd_bytes: float = 0.0
    shape: str = ""  # the first input's shape, for the tables


def _compute_bytes(t: torch.Tensor) -> int:
    """Element size of the dtype a matmul-like op computes in (autocast's when it is on)."""
    kind = t.device.type
    if t.is_floating_point() and torch.is_autocast_enabled(kind):
        return F.dtype_bytes(torch.get_autocast_dtype(kind))
    return t.element_size()


def _rows_cols(x: torch.Tensor) -> tuple[int, int]:
    cols = x.shape[-1] if x.dim() else 1
    return x.numel() // max(cols, 1), cols


def _matmul_cost(M: int, N: int, K: int, db: int) -> tuple[float, float, float, float]:
    # backward: dX (M, K) = dY (M, N) @ W (N, K) and dW (N, K) = dY^T (N, M) @ X (M, K)
    return (F.matmul_flops(M, N, K), F.matmul_bytes(M, N, K, db),
            2 * F.matmul_flops(M, N, K), F.matmul_bytes(M, K, N, db) + F.matmul_bytes(N, K, M, db))  # fmt: skip


def op_cost(name: str, args: tuple, kwargs: dict, backend: str = "torch") -> OpCall:
    """The FLOPs and bytes of ``ops.<name>(*args, **kwargs)``; zeros for an op with no formula."""
    call = OpCall(name)
    x = args[0] if args else None
    if isinstance(x, torch.Tensor):
        call.shape = "x".join(str(s) for s in x.shape)
    try:
        costs = _COSTS.get(name)
        if costs is not None:
            call.fwd_flops, call.fwd_bytes, call.bwd_flops, call.bwd_bytes = (float(c) for c in costs(*args, backend=backend, **kwargs))
    except Exception:  # an estimate must never break the run it measures
        pass
    return call


def _linear(x, weight, bias=None, *, backend):
    K, N = x.shape[-1], weight.shape[0]
    M = x.numel() // K
    return _matmul_cost(M, N, K, _compute_bytes(x))


def _matmul(a, b, *, backend):
    M, K = a.shape[-2], a.shape[-1]
    N = b.shape[-1]
    batch = a.numel() // (M * K)
    return tuple(batch * c for c in _matmul_cost(M, N, K, _compute_bytes(a)))


def _attention(q, k, v, *, causal=True, backend, **_):
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    db = _compute_bytes(q)
    fwd_b = F.attention_bytes(B, H, T, S, D, db, kv_heads=Hkv)
    # backward reads q, k, v, o, dO and writes dq, dk, dv
    bwd_b = (4 * B * H * T * D + 4 * B * Hkv * S * D) * db
    return (F.attention_flops(B, H, T, S, D, causal), fwd_b, F.attention_backward_flops(B, H, T, S, D, causal), bwd_b)


def _qkv_attention(qkv, num_heads, *, causal=True, backend, **_):
    """attention's cost on the (B, H, T, D) views of the packed projection."""
    B, T, C3 = qkv.shape
    q = qkv.new_empty(1).expand(B, num_heads, T, C3 // (3 * num_heads))  # (B, H, T, D): a shape, no memory
    return _attention(q, q, q, causal=causal, backend=backend)


def _decode_attention(q, k_cache, v_cache, cache_seqlens, *, backend, **_):
    """One query per head against the whole cache: an upper bound, as if every slot were filled
    (the lengths live on the device; reading them would wait for it). Inference only: no backward."""
    B, Hq, _, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    db = _compute_bytes(q)
    return 4 * B * Hq * S * D, (2 * B * Hkv * S * D + 2 * B * Hq * D) * db, 0, 0


def _norm(x, weight, *rest, backend, kind):
    rows, cols = _rows_cols(x)
    db = x.element_size()
    if kind == "layer":
        bias = rest[0] if rest else None
        fl, by = F.layernorm_flops(rows, cols, bias is not None), F.layernorm_bytes(rows, cols, db, bias is not None)
    else:
        fl, by = F.rmsnorm_flops(rows, cols), F.rmsnorm_bytes(rows, cols, db)
    # backward: read x, dy and the weight, write dx and the weight's (and bias's) gradient
    return fl, by, 2 * fl, (3 * rows * cols + 3 * cols) * db


def _add_norm(x, h, weight, *rest, backend, kind):
    """The norm's cost plus the add; x and h read, s (x's dtype) and y (h's dtype) written, once each."""
    rows, cols = _rows_cols(x)
    n, dx, dh = rows * cols, x.element_size(), h.element_size()
    fl, _, fl_bwd, _ = _norm(x, weight, *rest, backend=backend, kind=kind)
    params = (2 if kind == "layer" and rest and rest[0] is not None else 1) * cols * weight.element_size()
    # forward: read x, h, write s, y; backward: read dy, ds, s, write dx, dh (and the weight's gradients)
    return fl + n, n * (2 * dx + 2 * dh) + params, fl_bwd + n, n * (3 * dx + 2 * dh) + params


def _elementwise(n_in: int, flops_fwd: int, flops_bwd: int, bwd_in: int, bwd_out: int):
    def cost(x, *rest, backend, **_):
        n, db = x.numel(), x.element_size()
        return (F.elementwise_flops(n, flops_fwd), F.elementwise_bytes(n, n_in, 1, db),
                F.elementwise_flops(n, flops_bwd), F.elementwise_bytes(n, bwd_in, bwd_out, db))  # fmt: skip

    return cost


def _softmax(x, *, backend):
    rows, cols = _rows_cols(x)
    db = x.element_size()
    # backward dx = y * (dy - sum(dy * y)): 4 FLOPs an element; read y and dy, write dx
    return F.softmax_flops(rows, cols), F.softmax_bytes(rows, cols, db), 4 * rows * cols, 3 * rows * cols * db


def _rope(x, cos, sin, *, backend):
    n, db = x.numel(), x.element_size()
    angles = (cos.numel() + sin.numel()) * cos.element_size()
    # x * cos + rotate(x) * sin: 3 FLOPs an element, the backward the same rotation backwards
    return 3 * n, 2 * n * db + angles, 3 * n, 2 * n * db + angles


def _embedding(ids, weight, *, backend):
    n, C = ids.numel(), weight.shape[-1]
    db = weight.element_size()
    # a gather: no arithmetic. Backward: add each row's gradient into its table row
    return 0, n * ids.element_size() + 2 * n * C * db, n * C, n * ids.element_size() + n * C * db + weight.numel() * db


def _cross_entropy(logits, targets, *, backend, **_):
    N, V = _rows_cols(logits)
    db = logits.element_size()
    # forward: max, subtract, exp, sum over each row (4 an element); backward: softmax - one-hot
    return 4 * N * V, N * V * db + targets.numel() * 8, 4 * N * V, 2 * N * V * db + targets.numel() * 8


def _fused_linear_ce(hidden, weight, targets, bias=None, *, backend, **_):
    N, C = hidden.shape
    V = weight.shape[0]
    db = _compute_bytes(hidden)
    logits = F.matmul_flops(N, V, C) + 4 * N * V  # the (N, V) logits are made chunk by chunk, never stored
    io = (N * C + V * C) * db + targets.numel() * 8
    grads = 2 * F.matmul_flops(N, V, C) + 4 * N * V
    if backend == "triton" and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        # the Triton kernel computes the gradients in the forward; the backward only scales them
        return logits + grads, 2 * io, N * C + V * C, 2 * (N * C + V * C) * 4
    return logits, io, grads, 2 * io


_COSTS = {
    "linear": _linear,
    "matmul": _matmul,
    "attention": _attention,
    "qkv_attention": _qkv_attention,
    "decode_attention": _decode_attention,
    "layer_norm": lambda *a, backend, **k: _norm(*a[:3], backend=backend, kind="layer"),
    "rms_norm": lambda *a, backend, **k: _norm(*a[:2], backend=backend, kind="rms"),
    "add_layer_norm": lambda *a, backend, **k: _add_norm(*a[:4], backend=backend, kind="layer"),
    "add_rms_norm": lambda *a, backend, **k: _add_norm(*a[:3], backend=backend, kind="rms"),
    "softmax": _softmax,
    "add": _elementwise(2, 1, 0, 1, 2),  # backward: dy copied to both inputs (often no kernel at all)
    "gelu_tanh": _elementwise(1, 8, 12, 2, 1),
    "silu_mul": lambda gate, up, *, backend: tuple(
        2 * c for c in _elementwise(1, 5, 8, 2, 1)(gate, backend=backend)),  # two inputs of one shape
    "apply_rope": _rope,
    "embedding": _embedding,
    "cross_entropy": _cross_entropy,
    "fused_linear_cross_entropy": _fused_linear_ce,
}

_state = threading.local()


def _wrap(name: str, fn):
    from llm_course.backends import get_backend

    def wrapper(*args, **kwargs):
        if getattr(_state, "depth", 0) > 0:  # inside another op: counted by the outer one
            return fn(*args, **kwargs)
        calls = getattr(_state, "calls", None)
        if calls is not None:
            calls.append(op_cost(name, args, kwargs, get_backend()))
        _state.depth = 1
        try:
            with torch.profiler.record_function(RANGE_PREFIX + name):
                return fn(*args, **kwargs)
        finally:
            _state.depth = 0

    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    return wrapper


@contextlib.contextmanager
def annotate_ops() -> Iterator[list[OpCall]]:
    """Within the block, every ``llm_course.ops`` function runs in a named profiler range.

    Yields the list of :class:`OpCall` the block's op calls append to, in call order (the
    order of their ranges in the profile). The functions are put back on exit.
    """
    from llm_course import ops
    from llm_course.backends import declared_ops

    names = [n for n in declared_ops() if callable(getattr(ops, n, None))]
    saved = {n: getattr(ops, n) for n in names}
    calls: list[OpCall] = []
    _state.calls, _state.depth = calls, 0
    try:
        for n in names:
            setattr(ops, n, _wrap(n, saved[n]))
        yield calls
    finally:
        for n in names:
            setattr(ops, n, saved[n])
        _state.calls = None


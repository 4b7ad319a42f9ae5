"""The input checks every backend of an op shares: run by ``llm_course.ops`` before dispatch.

Each op declared in ``llm_course/ops.py`` names its check here, one function per
op, with the op's own name and signature:

    @op(torch="norms:rms_norm", triton="rmsnorm:rms_norm", check=checks.rms_norm, ...)
    def rms_norm(x, weight, eps=1e-6): ...

``ops.rms_norm(x, weight)`` then calls ``checks.rms_norm(x, weight)`` first and
the backend in force (torch, triton, or the learner's exercise) second, so every
backend refuses a bad input with the same clear error, naming the op, the
argument and what is wrong with it, before any work is done.

What belongs here is the op's *contract*, true for every backend: arguments of
the right kind, floating-point data (an integer tensor would be computed in float
and cast back: a silent wrong answer), tensors that hold data (not on the ``meta``
device) on one device, one dtype where the op does not promote, shapes that agree
(no silent broadcasting of a bias), valid options. What only a kernel needs (a
device Triton runs on, a dtype it supports, contiguity, size limits) is checked
by the kernel's entry point with :mod:`llm_course.backends.triton_ops.checks`.

The helpers at the top are public too: use them in new checks.
"""

from __future__ import annotations

import math

import torch

from llm_course.backends.torch_ops.rope import check_rope_inputs

# --- helpers ---------------------------------------------------------------------------------


def shape_of(t: object) -> str:
    """``(2, 3)`` for a tensor, the type's name otherwise: for error messages."""
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def require_tensor(op: str, name: str, t: object, *, ndim: int | tuple[int, ...] | None = None, optional: bool = False) -> None:
    """``t`` is a tensor (or None when ``optional``), of rank ``ndim`` (an int, or a tuple of allowed ranks) if given."""
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if t.dim() not in dims:
            raise ValueError(f"{op}: {name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")


def require_at_least_1d(op: str, name: str, t: torch.Tensor) -> None:
    """Ops over the last dimension need one."""
    if t.dim() == 0:
        raise ValueError(f"{op}: {name} must have at least one dimension (the last one is reduced over), got a scalar")


def require_same_shape(op: str, **tensors: torch.Tensor) -> None:
    """All the given tensors of one shape (elementwise ops do not broadcast)."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"{op}: inputs must have the same shape, got {desc}")


def require_vector_of(op: str, name: str, t: torch.Tensor | None, n: int, what: str = "x's last dimension") -> None:
    """``t`` is None or a (n,) tensor: a per-feature weight or bias."""
    if t is None:
        return
    require_tensor(op, name, t)
    if tuple(t.shape) != (n,):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected ({n},) to match {what}")


FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_device(op: str, **tensors: torch.Tensor | None) -> None:
    """Tensors that hold data (not on the ``meta`` device), all on one device (None: an absent optional tensor)."""
    first = None  # a plain loop, no dicts or sets: every op call runs this on the host's time
    for name, t in tensors.items():
        if t is None:
            continue
        device = t.device
        if device.type == "meta":
            raise ValueError(
                f"{op}: {name} is on the meta device: it has a shape but no data "
                "(materialize it first, e.g. module.to_empty(device=...) and load or initialize the weights)"
            )
        if first is None:
            first = device
        elif device != first:
            desc = ", ".join(f"{n} on {t.device}" for n, t in tensors.items() if t is not None)
            raise ValueError(f"{op}: inputs are on different devices ({desc})")


def require_floating(op: str, **tensors: torch.Tensor | None) -> None:
    """Floating-point tensors: an integer or bool input would be computed in float and cast back, silently wrong."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in FLOATING:
            allowed = ", ".join(map(_dtype_name, FLOATING))
            raise TypeError(f"{op}: {name} has dtype {_dtype_name(t.dtype)}; the op takes floating-point tensors ({allowed})")


def require_same_dtype(op: str, **tensors: torch.Tensor | None) -> None:
    """All the given tensors of one dtype (ops that compute in their inputs' dtype do not promote)."""
    present = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(present.values())) > 1:
        desc = ", ".join(f"{n} {_dtype_name(d)}" for n, d in present.items())
        raise TypeError(f"{op}: inputs have different dtypes ({desc})")


def require_eps(op: str, eps: object) -> None:
    """A finite, non-negative number (``eps`` of the norms)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{op}: eps must be a finite number >= 0, got {eps!r}")


# --- one check per op, named and shaped like the op -------------------------------------------


def add(x: torch.Tensor, y: torch.Tensor) -> None:
    require_tensor("add", "x", x)
    require_tensor("add", "y", y)
    require_device("add", x=x, y=y)
    require_floating("add", x=x, y=y)
    require_same_dtype("add", x=x, y=y)
    require_same_shape("add", x=x, y=y)


def softmax(x: torch.Tensor) -> None:
    require_tensor("softmax", "x", x)
    require_device("softmax", x=x)
    require_floating("softmax", x=x)
    require_at_least_1d("softmax", "x", x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    require_tensor("rms_norm", "x", x)
    require_at_least_1d("rms_norm", "x", x)
    require_tensor("rms_norm", "weight", weight)
    require_device("rms_norm", x=x, weight=weight)
    require_floating("rms_norm", x=x, weight=weight)  # weight may have another float dtype than x
    require_vector_of("rms_norm", "weight", weight, x.shape[-1])
    require_eps("rms_norm", eps)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> None:
    require_tensor("layer_norm", "x", x)
    require_at_least_1d("layer_norm", "x", x)
    require_tensor("layer_norm", "weight", weight)
    require_tensor("layer_norm", "bias", bias, optional=True)
    require_device("layer_norm", x=x, weight=weight, bias=bias)
    require_floating("layer_norm", x=x, weight=weight, bias=bias)  # weight, bias may have another float dtype
    require_vector_of("layer_norm", "weight", weight, x.shape[-1])
    require_vector_of("layer_norm", "bias", bias, x.shape[-1])
    require_eps("layer_norm", eps)


def add_layer_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float = 1e-5) -> None:  # fmt: skip
    _add_norm("add_layer_norm", x, h, weight, bias, eps)


def add_rms_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    _add_norm("add_rms_norm", x, h, weight, None, eps)


def _add_norm(op: str, x, h, weight, bias, eps) -> None:
    require_tensor(op, "x", x)
    require_at_least_1d(op, "x", x)
    require_tensor(op, "h", h)
    require_same_shape(op, x=x, h=h)  # no broadcasting: h is a sub-layer's output for every token of x
    require_tensor(op, "weight", weight)
    require_tensor(op, "bias", bias, optional=True)
    require_device(op, x=x, h=h, weight=weight, bias=bias)
    require_floating(op, x=x, h=h, weight=weight, bias=bias)  # x and h may differ: s takes x's, y h's dtype
    require_vector_of(op, "weight", weight, x.shape[-1])
    require_vector_of(op, "bias", bias, x.shape[-1])
    require_eps(op, eps)


def matmul(a: torch.Tensor, b: torch.Tensor) -> None:
    require_tensor("matmul", "a", a, ndim=2)
    require_tensor("matmul", "b", b, ndim=2)
    require_device("matmul", a=a, b=b)
    require_floating("matmul", a=a, b=b)
    require_same_dtype("matmul", a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"matmul: inner dimensions differ: a is {tuple(a.shape)} and b is {tuple(b.shape)} (a's columns must equal b's rows)"
        )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    require_tensor("linear", "x", x)
    require_tensor("linear", "weight", weight, ndim=2)
    require_at_least_1d("linear", "x", x)
    require_tensor("linear", "bias", bias, optional=True)
    require_device("linear", x=x, weight=weight, bias=bias)
    require_floating("linear", x=x, weight=weight, bias=bias)
    if not torch.is_autocast_enabled(x.device.type):  # under autocast the product casts its inputs itself
        require_same_dtype("linear", x=x, weight=weight, bias=bias)
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"linear: x has {x.shape[-1]} features (last dimension) but weight {tuple(weight.shape)} expects {K}")
    require_vector_of("linear", "bias", bias, N, f"weight's {N} output features")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    require_tensor("apply_rope", "x", x, ndim=4)
    require_tensor("apply_rope", "cos", cos, ndim=(2, 3))
    require_tensor("apply_rope", "sin", sin, ndim=(2, 3))
    require_device("apply_rope", x=x, cos=cos, sin=sin)
    require_floating("apply_rope", x=x, cos=cos, sin=sin)  # the tables may be float32 for a float16 x
    check_rope_inputs("apply_rope", x, cos, sin)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> None:
    op = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(op, name, t, ndim=4)
    require_device(op, q=q, k=k, v=v)
    require_floating(op, q=q, k=k, v=v)
    require_same_dtype(op, q=q, k=k, v=v)
    B, Hq, T, D = q.shape
    Bk, Hkv, S, Dk = k.shape
    if Bk != B or v.shape[0] != B:
        raise ValueError(f"{op}: batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Dk != D:
        raise ValueError(f"{op}: q and k head sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if tuple(v.shape[1:3]) != (Hkv, S):
        raise ValueError(f"{op}: k and v differ in heads or length: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"{op}: the number of kv heads ({Hkv}) must divide the number of query heads ({Hq})")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"{op}: scale must be a positive number or None, got {scale!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"{op}: window must be a positive int or None, got {window!r}")
    _padding_mask_and_dropout(op, key_padding_mask, dropout_p, shape=(B, S), names="(B, S)", q=q)


def _padding_mask_and_dropout(op: str, key_padding_mask, dropout_p, *, shape: tuple[int, int], names: str,
                              **inputs: torch.Tensor) -> None:  # fmt: skip
    """The mask: None, or a bool tensor of ``shape`` on the device of ``inputs``; dropout_p in [0, 1)."""
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != shape:
            got = f"{str(m.dtype).removeprefix('torch.')} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"{op}: key_padding_mask must be a bool tensor of shape {names} = {shape}, got {got}")
        require_device(op, **inputs, key_padding_mask=m)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be a number in [0, 1), got {dropout_p!r}")


def qkv_attention(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> None:
    op = "qkv_attention"
    require_tensor(op, "qkv", qkv, ndim=3)
    require_device(op, qkv=qkv)
    require_floating(op, qkv=qkv)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{op}: num_heads must be a positive int, got {num_heads!r}")
    B, T, C3 = qkv.shape
    if C3 % (3 * num_heads) != 0:
        raise ValueError(f"{op}: qkv has shape {tuple(qkv.shape)}; its last dimension must be 3 * num_heads * "
                         f"head_dim (q, k and v side by side), but {C3} is not a multiple of 3 * {num_heads}")  # fmt: skip
    _padding_mask_and_dropout(op, key_padding_mask, dropout_p, shape=(B, T), names="(B, T)", qkv=qkv)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> None:
    """Shapes, kinds and options only: the values of ``cache_seqlens`` live on the device and are not read
    here (reading them would wait for the GPU; a length past S_max counts as S_max, one below 0 as 0)."""
    op = "decode_attention"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        require_tensor(op, name, t, ndim=4)
    require_tensor(op, "cache_seqlens", cache_seqlens)
    require_device(op, q=q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=cache_seqlens)
    require_floating(op, q=q, k_cache=k_cache, v_cache=v_cache)
    require_same_dtype(op, q=q, k_cache=k_cache, v_cache=v_cache)
    B, Hq, T, D = q.shape
    Bk, Hkv, S, Dk = k_cache.shape
    if T != 1:
        raise ValueError(f"{op}: q must hold one query per head, (B, Hq, 1, D), got shape {tuple(q.shape)} (use ops.attention for several)")
    if Bk != B or Dk != D:
        raise ValueError(f"{op}: q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)} must agree on batch and head size "
                         "(q is (B, Hq, 1, D), the caches (B, Hkv, S_max, D))")  # fmt: skip
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"{op}: k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"{op}: the number of kv heads ({Hkv}) must divide the number of query heads ({Hq})")
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"{op}: cache_seqlens must be an int32 or int64 tensor of shape (B,) = ({B},), "
                         f"got {_dtype_name(cache_seqlens.dtype)} {tuple(cache_seqlens.shape)}")  # fmt: skip
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"{op}: scale must be a positive number or None, got {scale!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"{op}: window must be a positive int or None, got {window!r}")
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (B, S):
            got = f"{_dtype_name(m.dtype)} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"{op}: key_padding_mask must be a bool tensor of shape (B, S_max) = ({B}, {S}), got {got}")
        require_device(op, q=q, key_padding_mask=m)


def gelu_tanh(x: torch.Tensor) -> None:
    require_tensor("gelu_tanh", "x", x)
    require_device("gelu_tanh", x=x)
    require_floating("gelu_tanh", x=x)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> None:
    require_tensor("silu_mul", "gate", gate)
    require_tensor("silu_mul", "up", up)
    require_device("silu_mul", gate=gate, up=up)
    require_floating("silu_mul", gate=gate, up=up)
    require_same_dtype("silu_mul", gate=gate, up=up)
    require_same_shape("silu_mul", gate=gate, up=up)


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> None:
    """Kinds and ranks; that every id is a row of the table is checked where the table is read."""
    require_tensor("embedding", "ids", ids)
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"embedding: ids must be int64 or int32, got {str(ids.dtype).removeprefix('torch.')}")
    require_tensor("embedding", "weight", weight, ndim=2)
    require_device("embedding", ids=ids, weight=weight)
    require_floating("embedding", weight=weight)


def _require_targets(op: str, targets: torch.Tensor, n_rows: int, ignore_index: int, reduction: str) -> None:
    """Class indices, one per row; the options. The values are not read here (on a GPU that would wait for it)."""
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: targets must be int64 or int32 class indices, got {_dtype_name(targets.dtype)}")
    if tuple(targets.shape) != (n_rows,):
        raise ValueError(f"{op}: targets has shape {tuple(targets.shape)}, expected ({n_rows},): one class index per row")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{op}: ignore_index must be an int, got {ignore_index!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{op}: reduction must be 'mean' or 'sum', got {reduction!r}")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100, reduction: str = "mean") -> None:
    op = "cross_entropy"
    require_tensor(op, "logits", logits, ndim=2)
    require_tensor(op, "targets", targets)
    require_device(op, logits=logits, targets=targets)
    require_floating(op, logits=logits)
    if logits.shape[1] == 0:
        raise ValueError(f"{op}: logits has shape {tuple(logits.shape)}: no class to predict (V = 0)")
    _require_targets(op, targets, logits.shape[0], ignore_index, reduction)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> None:
    op = "fused_linear_cross_entropy"
    require_tensor(op, "hidden", hidden, ndim=2)
    require_tensor(op, "weight", weight, ndim=2)
    require_tensor(op, "targets", targets)
    require_tensor(op, "bias", bias, optional=True)
    require_device(op, hidden=hidden, weight=weight, targets=targets, bias=bias)
    require_floating(op, hidden=hidden, weight=weight, bias=bias)
    require_same_dtype(op, hidden=hidden, weight=weight, bias=bias)
    V, C = weight.shape
    if hidden.shape[1] != C:
        raise ValueError(f"{op}: hidden has {hidden.shape[1]} features but weight {tuple(weight.shape)} expects {C}")
    if V == 0:
        raise ValueError(f"{op}: weight has shape {tuple(weight.shape)}: no class to predict (V = 0)")
    require_vector_of(op, "bias", bias, V, f"weight's {V} classes")
    _require_targets(op, targets, hidden.shape[0], ignore_index, reduction)

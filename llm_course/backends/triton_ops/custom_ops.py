"""The Triton ops as PyTorch custom ops: what ``torch.compile`` sees of them.

``torch.compile`` works by tracing Python: it runs the model with stand-in tensors that
have a shape and a dtype but no data, records every PyTorch op into a graph, and
hands the graph to a compiler (inductor) that fuses the small ops into few kernels. A
Triton launch cannot be traced that way: the launcher reads pointers and strides, and
the kernel needs real memory (in the CPU interpreter, real storage). So under compile
each Triton op is a **custom op** (``torch.library.custom_op``), a black box that the
graph calls as a whole, declared by three things:

* what it computes: the launcher, run with real tensors when the compiled graph runs;
* its "fake" version: the shapes and dtypes of its outputs, computed without any data,
  which is all that tracing needs (``register_fake``);
* its backward (``register_autograd``): which tensors to keep, and another custom op
  that launches the backward kernels.

Inductor then fuses the work *around* the course's kernels (the residual adds, casts,
biases, reshapes) while the kernels themselves run as written. Outside compile nothing
here is used: the op modules call their ``torch.autograd.Function`` directly, which costs
less on the host per call. Each op module asks ``torch.compiler.is_compiling()`` and
calls the function of the same name here when it is true.

One thing the models must respect for inductor: the first time it meets a custom op,
PyTorch 2.11 and older print the IR of every input in full, even with logging off, and
that IR is the input's whole history. An op first met with the residual stream of every
layer behind it takes longer to print than to train; the models are written so that each
op is first met near the start of the forward or the end of the backward
(``tests/test_compile_inductor.py`` checks).

The launchers are imported inside the custom ops' bodies, which run only when a
compiled graph runs: this module imports nothing from the op modules at import time, so
they can import it at the top without an import circle.
"""

from __future__ import annotations

from typing import Optional

import torch

from llm_course.backends.triton_ops.launch import last_dim_contiguous  # a helper with no kernels: no circle

Tensor = torch.Tensor
NS = "llm_course"
# (The signatures below say Optional[...] rather than "X | None": torch.library reads them to
# write each op's schema, and the typing form is the one every PyTorch release accepts.)


def _new(t: Tensor, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
    """A fake output: contiguous, like the real outputs (a compiled graph relies on the strides; attention's differ)."""
    return t.new_empty(shape or t.shape, dtype=dtype or t.dtype)


def _no_grad_outputs(ctx, *tensors: Tensor) -> None:
    """Saved statistics (mean, rstd, lse) are outputs too; their gradients are never used."""
    ctx.mark_non_differentiable(*tensors)


# --- elementwise: add, GELU, SiLU x up --------------------------------------------------------


@torch.library.custom_op(f"{NS}::add", mutates_args=())
def _add(x: Tensor, y: Tensor) -> Tensor:
    from llm_course.backends.triton_ops.add import add_forward

    return add_forward(x, y)


_add.register_fake(lambda x, y: _new(x))
_add.register_autograd(lambda ctx, dout: (dout, dout))


def add(x: Tensor, y: Tensor) -> Tensor:
    return _add(x, y)


@torch.library.custom_op(f"{NS}::gelu_tanh", mutates_args=())
def _gelu_tanh(x: Tensor) -> Tensor:
    from llm_course.backends.triton_ops.activations import gelu_tanh_forward

    return gelu_tanh_forward(x)


@torch.library.custom_op(f"{NS}::gelu_tanh_backward", mutates_args=())
def _gelu_tanh_backward(dy: Tensor, x: Tensor) -> Tensor:
    from llm_course.backends.triton_ops.activations import gelu_tanh_backward

    return gelu_tanh_backward(dy, x)


_gelu_tanh.register_fake(lambda x: _new(x))
_gelu_tanh_backward.register_fake(lambda dy, x: _new(x))
_gelu_tanh.register_autograd(
    lambda ctx, dy: _gelu_tanh_backward(dy, ctx.saved_tensors[0]),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
)


def gelu_tanh(x: Tensor) -> Tensor:
    return _gelu_tanh(x)


@torch.library.custom_op(f"{NS}::silu_mul", mutates_args=())
def _silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    from llm_course.backends.triton_ops.activations import silu_mul_forward

    return silu_mul_forward(gate, up)


@torch.library.custom_op(f"{NS}::silu_mul_backward", mutates_args=())
def _silu_mul_backward(dy: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    from llm_course.backends.triton_ops.activations import silu_mul_backward

    return silu_mul_backward(dy, gate, up)


_silu_mul.register_fake(lambda gate, up: _new(gate))
_silu_mul_backward.register_fake(lambda dy, gate, up: (_new(gate), _new(up)))
_silu_mul.register_autograd(
    lambda ctx, dy: _silu_mul_backward(dy, *ctx.saved_tensors),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs),
)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    return _silu_mul(gate, up)


# --- embedding --------------------------------------------------------------------------------


@torch.library.custom_op(f"{NS}::embedding", mutates_args=())
def _embedding(ids: Tensor, weight: Tensor) -> Tensor:
    from llm_course.backends.triton_ops.embedding import embedding_forward

    flat = ids.reshape(-1).contiguous()  # (T,)
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    return embedding_forward(flat, w).view(*ids.shape, weight.shape[1])  # (..., C)


@torch.library.custom_op(f"{NS}::embedding_backward", mutates_args=())
def _embedding_backward(dout: Tensor, ids: Tensor, num_rows: int) -> Tensor:
    from llm_course.backends.triton_ops.embedding import embedding_backward

    return embedding_backward(dout.reshape(-1, dout.shape[-1]), ids.reshape(-1).contiguous(), num_rows)


@_embedding.register_fake
def _(ids, weight):
    return weight.new_empty(*ids.shape, weight.shape[1])


@_embedding_backward.register_fake
def _(dout, ids, num_rows):
    return dout.new_empty(num_rows, dout.shape[-1], dtype=torch.float32)


def _embedding_setup(ctx, inputs, output):
    ids, weight = inputs
    ctx.save_for_backward(ids)
    ctx.num_rows, ctx.weight_dtype = weight.shape[0], weight.dtype


_embedding.register_autograd(
    lambda ctx, dout: (None, _embedding_backward(dout, ctx.saved_tensors[0], ctx.num_rows).to(ctx.weight_dtype)),
    setup_context=_embedding_setup,
)


def embedding(ids: Tensor, weight: Tensor) -> Tensor:
    return _embedding(ids, weight)


# --- norms ------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NS}::layer_norm", mutates_args=())
def _layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    from llm_course.backends.triton_ops.launch import as_rows
    from llm_course.backends.triton_ops.layernorm import layernorm_forward

    y, mean, rstd = layernorm_forward(as_rows(x), weight, bias, eps)
    return y.view(x.shape), mean, rstd


@torch.library.custom_op(f"{NS}::layer_norm_backward", mutates_args=())
def _layer_norm_backward(
    dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    from llm_course.backends.triton_ops.launch import as_rows
    from llm_course.backends.triton_ops.layernorm import layernorm_backward

    dx, dw, db = layernorm_backward(as_rows(dy), as_rows(x), weight, bias, mean, rstd)
    # dw and db may be two rows of one buffer; a custom op's outputs must not share memory
    return dx.view(dy.shape), dw.clone(), db.clone() if db is not None else weight.new_empty(0)


@_layer_norm.register_fake
def _(x, weight, bias, eps):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else x.numel()
    stat = x.new_empty(rows, dtype=torch.float32)
    return _new(x), stat, torch.empty_like(stat)


@_layer_norm_backward.register_fake
def _(dy, x, weight, bias, mean, rstd):
    db = _new(bias) if bias is not None else weight.new_empty(0)
    return _new(dy), _new(weight), db


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    _no_grad_outputs(ctx, mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.has_bias = bias is not None


def _layer_norm_grad(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layer_norm_backward(dy, x, weight, bias, mean, rstd)
    return dx, dw, db if ctx.has_bias else None, None


_layer_norm.register_autograd(_layer_norm_grad, setup_context=_layer_norm_setup)


def layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float) -> Tensor:
    return _layer_norm(x, weight, bias, eps)[0]


@torch.library.custom_op(f"{NS}::rms_norm", mutates_args=())
def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    from llm_course.backends.triton_ops.launch import as_rows
    from llm_course.backends.triton_ops.rmsnorm import rmsnorm_forward

    y, rstd = rmsnorm_forward(as_rows(x), weight, eps)
    return y.view(x.shape), rstd


@torch.library.custom_op(f"{NS}::rms_norm_backward", mutates_args=())
def _rms_norm_backward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    from llm_course.backends.triton_ops.launch import as_rows
    from llm_course.backends.triton_ops.rmsnorm import rmsnorm_backward

    dx, dw = rmsnorm_backward(as_rows(dy), as_rows(x), weight, rstd)
    return dx.view(dy.shape), dw


@_rms_norm.register_fake
def _(x, weight, eps):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else x.numel()
    return _new(x), x.new_empty(rows, dtype=torch.float32)


@_rms_norm_backward.register_fake
def _(dy, x, weight, rstd):
    return _new(dy), _new(weight)


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _ = inputs
    _no_grad_outputs(ctx, output[1])
    ctx.save_for_backward(x, weight, output[1])


_rms_norm.register_autograd(
    lambda ctx, dy, _drstd: (*_rms_norm_backward(dy, *ctx.saved_tensors), None), setup_context=_rms_norm_setup
)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return _rms_norm(x, weight, eps)[0]


@torch.library.custom_op(f"{NS}::add_norm", mutates_args=())
def _add_norm(
    x: Tensor, h: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, is_rms: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from llm_course.backends.triton_ops.add_norm import add_norm_forward
    from llm_course.backends.triton_ops.launch import as_rows

    s, y, mean, rstd = add_norm_forward(as_rows(x), as_rows(h), weight, bias, eps, is_rms)
    return s.view(x.shape), y.view(x.shape), mean, rstd


@torch.library.custom_op(f"{NS}::add_norm_backward", mutates_args=())
def _add_norm_backward(
    ds: Tensor, dy: Tensor, s: Tensor, weight: Tensor, bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
    h_dtype: torch.dtype, is_rms: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    from llm_course.backends.triton_ops.add_norm import add_norm_backward
    from llm_course.backends.triton_ops.launch import as_rows

    dx, dh, dw, db = add_norm_backward(as_rows(ds), as_rows(dy), as_rows(s), weight, bias, mean, rstd, h_dtype, is_rms)
    # dw and db may be two rows of one buffer; a custom op's outputs must not share memory
    return dx.view(dy.shape), dh.view(dy.shape), dw.clone(), db.clone() if db is not None else weight.new_empty(0)


@_add_norm.register_fake
def _(x, h, weight, bias, eps, is_rms):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else x.numel()
    stat = x.new_empty(rows, dtype=torch.float32)
    return _new(x), _new(x, dtype=h.dtype), stat, torch.empty_like(stat)


@_add_norm_backward.register_fake
def _(ds, dy, s, weight, bias, mean, rstd, h_dtype, is_rms):
    db = _new(bias) if bias is not None else weight.new_empty(0)
    return _new(s), _new(s, dtype=h_dtype), _new(weight), db


def _add_norm_setup(ctx, inputs, output):
    x, h, weight, bias, _, is_rms = inputs
    s, _, mean, rstd = output
    _no_grad_outputs(ctx, mean, rstd)
    ctx.save_for_backward(s, weight, bias, mean, rstd)
    ctx.has_bias, ctx.h_dtype, ctx.is_rms = bias is not None, h.dtype, is_rms


def _add_norm_grad(ctx, ds, dy, _dmean, _drstd):
    s, weight, bias, mean, rstd = ctx.saved_tensors
    ds = torch.zeros_like(s) if ds is None else ds  # an output nobody used
    dy = torch.zeros_like(s, dtype=ctx.h_dtype) if dy is None else dy
    dx, dh, dw, db = _add_norm_backward(ds, dy, s, weight, bias, mean, rstd, ctx.h_dtype, ctx.is_rms)
    return dx, dh, dw, db if ctx.has_bias else None, None, None


_add_norm.register_autograd(_add_norm_grad, setup_context=_add_norm_setup)


def add_norm(x: Tensor, h: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, is_rms: bool):
    s, y, _, _ = _add_norm(x, h, weight, bias, eps, is_rms)
    return s, y


# --- RoPE -------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NS}::apply_rope", mutates_args=())
def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor, backward: bool) -> Tensor:
    from llm_course.backends.triton_ops.rope import rope_launch

    return rope_launch(last_dim_contiguous(x), cos, sin, backward=backward)[0]


@_apply_rope.register_fake
def _(x, cos, sin, backward):
    # the one output that is not contiguous: the kernel writes it in x's layout (empty_like), as here
    return torch.empty_like(last_dim_contiguous(x))


_apply_rope.register_autograd(
    lambda ctx, dout: (_apply_rope(dout, *ctx.saved_tensors, True), None, None, None),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[1], inputs[2]),
)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return _apply_rope(x, cos, sin, False)


# --- attention --------------------------------------------------------------------------------


@torch.library.custom_op(f"{NS}::flash_attention", mutates_args=())
def _flash_attention(
    q: Tensor, k: Tensor, v: Tensor,
    causal: bool, scale: Optional[float], window: Optional[int], key_padding_mask: Optional[Tensor],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    from llm_course.backends.triton_ops.flash_attention import flash_attention_forward

    return flash_attention_forward(q, k, v, causal=causal, scale=scale, window=window,
                                   key_padding_mask=key_padding_mask)  # fmt: skip


@torch.library.custom_op(f"{NS}::flash_attention_backward", mutates_args=())
def _flash_attention_backward(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor,
    causal: bool, scale: Optional[float], window: Optional[int], key_padding_mask: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    from llm_course.backends.triton_ops.flash_attention_bwd import flash_attention_backward

    return flash_attention_backward(q, k, v, o, lse, do, causal=causal, scale=scale, window=window,
                                    key_padding_mask=key_padding_mask)  # fmt: skip


@_flash_attention.register_fake
def _(q, k, v, causal, scale, window, key_padding_mask):
    from llm_course.backends.triton_ops.flash_common import heads_split_empty

    B, H, T, _ = q.shape  # o (B, H, T, Dv) stored (B, T, H, Dv) as the kernel writes it; lse (B, H, T)
    return heads_split_empty(B, H, T, v.shape[-1], like=q), q.new_empty(B, H, T, dtype=torch.float32)


@_flash_attention_backward.register_fake
def _(q, k, v, o, lse, do, causal, scale, window, key_padding_mask):
    from llm_course.backends.triton_ops.flash_common import heads_split_empty

    return tuple(heads_split_empty(*t.shape, like=t) for t in (q, k, v))  # stored like the real ones


def _flash_setup(ctx, inputs, output):
    q, k, v, causal, scale, window, key_padding_mask = inputs
    o, lse = output
    _no_grad_outputs(ctx, lse)
    ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
    ctx.causal, ctx.scale, ctx.window = causal, scale, window


def _flash_grad(ctx, do, _dlse):
    q, k, v, o, lse, key_padding_mask = ctx.saved_tensors
    do = last_dim_contiguous(do)
    dq, dk, dv = _flash_attention_backward(q, k, v, o, lse, do, ctx.causal, ctx.scale, ctx.window, key_padding_mask)
    return dq, dk, dv, None, None, None, None


_flash_attention.register_autograd(_flash_grad, setup_context=_flash_setup)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: Optional[float], window: Optional[int],
              key_padding_mask: Optional[Tensor]) -> Tensor:  # fmt: skip
    return _flash_attention(q, k, v, causal, scale, window, key_padding_mask)[0]


@torch.library.custom_op(f"{NS}::qkv_attention", mutates_args=())
def _qkv_attention(
    qkv: Tensor, num_heads: int, causal: bool, key_padding_mask: Optional[Tensor],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    from llm_course.backends.triton_ops.qkv_attention import qkv_attention_forward

    return qkv_attention_forward(qkv, num_heads, causal, key_padding_mask)


@torch.library.custom_op(f"{NS}::qkv_attention_backward", mutates_args=())
def _qkv_attention_backward(
    qkv: Tensor, y: Tensor, lse: Tensor, dy: Tensor, num_heads: int, causal: bool, key_padding_mask: Optional[Tensor],
) -> Tensor:  # fmt: skip
    from llm_course.backends.triton_ops.qkv_attention import qkv_attention_backward

    return qkv_attention_backward(qkv, y, lse, dy, num_heads, causal, key_padding_mask)


@_qkv_attention.register_fake
def _(qkv, num_heads, causal, key_padding_mask):
    B, T, C3 = qkv.shape  # y (B, T, C), contiguous like the real one; lse (B, H, T)
    return qkv.new_empty(B, T, C3 // 3), qkv.new_empty(B, num_heads, T, dtype=torch.float32)


_qkv_attention_backward.register_fake(lambda qkv, y, lse, dy, num_heads, causal, key_padding_mask: _new(qkv))


def _qkv_setup(ctx, inputs, output):
    qkv, num_heads, causal, key_padding_mask = inputs
    y, lse = output
    _no_grad_outputs(ctx, lse)
    ctx.save_for_backward(qkv, y, lse, key_padding_mask)
    ctx.num_heads, ctx.causal = num_heads, causal


def _qkv_grad(ctx, dy, _dlse):
    qkv, y, lse, key_padding_mask = ctx.saved_tensors
    return _qkv_attention_backward(qkv, y, lse, dy, ctx.num_heads, ctx.causal, key_padding_mask), None, None, None


_qkv_attention.register_autograd(_qkv_grad, setup_context=_qkv_setup)


def qkv_attention(qkv: Tensor, num_heads: int, causal: bool, key_padding_mask: Optional[Tensor]) -> Tensor:
    return _qkv_attention(qkv, num_heads, causal, key_padding_mask)[0]


# --- matrix products --------------------------------------------------------------------------


@torch.library.custom_op(f"{NS}::linear", mutates_args=())
def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    from llm_course.backends.triton_ops.matmul import launch_matmul

    return launch_matmul(x, weight.T, bias)  # (M, K) @ (K, N) + bias -> (M, N)


@torch.library.custom_op(f"{NS}::linear_backward", mutates_args=())
def _linear_backward(dy: Tensor, x: Tensor, weight: Tensor, has_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    from llm_course.backends.triton_ops.matmul import launch_matmul

    dx = launch_matmul(dy, weight)  # (M, N) @ (N, K) -> (M, K)
    dweight = launch_matmul(dy.T, x)  # (N, M) @ (M, K) -> (N, K)
    dbias = dy.sum(dim=0, dtype=torch.float32).to(dy.dtype) if has_bias else dy.new_empty(0)
    return dx, dweight, dbias


@_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


@_linear_backward.register_fake
def _(dy, x, weight, has_bias):
    return _new(x), _new(weight), dy.new_empty(dy.shape[1] if has_bias else 0)


def _linear_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_grad(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw, db = _linear_backward(dy, x, weight, ctx.has_bias)
    return dx, dw, db if ctx.has_bias else None


_linear.register_autograd(_linear_grad, setup_context=_linear_setup)


def linear(x2d: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x2d (M, K), weight (N, K), bias (N,) or None -> (M, N)."""
    return _linear(x2d, weight, bias)


# --- losses -----------------------------------------------------------------------------------


@torch.library.custom_op(f"{NS}::cross_entropy", mutates_args=())
def _cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int, reduction: str) -> tuple[Tensor, Tensor, Tensor]:
    from llm_course.backends.triton_ops.cross_entropy import cross_entropy_rows, reduce_rows

    loss_rows, lse = cross_entropy_rows(logits, targets, ignore_index)
    loss, factor = reduce_rows(loss_rows, targets, ignore_index, reduction)
    return loss, lse, factor.reshape(())


@torch.library.custom_op(f"{NS}::cross_entropy_backward", mutates_args=())
def _cross_entropy_backward(logits: Tensor, targets: Tensor, lse: Tensor, scale: Tensor, ignore_index: int) -> Tensor:
    from llm_course.backends.triton_ops.cross_entropy import cross_entropy_backward

    return cross_entropy_backward(logits, targets, lse, scale.reshape(1), ignore_index)


@_cross_entropy.register_fake
def _(logits, targets, ignore_index, reduction):
    n = logits.shape[0]
    f32 = dict(dtype=torch.float32, device=logits.device)
    loss = torch.empty((), **f32) if reduction != "none" else torch.empty(n, **f32)
    return loss, torch.empty(n, **f32), torch.empty((), **f32)


@_cross_entropy_backward.register_fake
def _(logits, targets, lse, scale, ignore_index):
    return _new(logits)


def _cross_entropy_setup(ctx, inputs, output):
    logits, targets, ignore_index, _ = inputs
    _, lse, factor = output
    _no_grad_outputs(ctx, lse, factor)
    ctx.save_for_backward(logits, targets, lse, factor)
    ctx.ignore_index = ignore_index


def _cross_entropy_grad(ctx, dloss, _dlse, _dfactor):
    logits, targets, lse, factor = ctx.saved_tensors
    scale = dloss.to(torch.float32) * factor  # () or (N,) for reduction="none"
    if scale.dim():
        raise NotImplementedError("cross_entropy under torch.compile: the backward of reduction='none'")
    return _cross_entropy_backward(logits, targets, lse, scale, ctx.ignore_index), None, None, None


_cross_entropy.register_autograd(_cross_entropy_grad, setup_context=_cross_entropy_setup)


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int, reduction: str) -> Tensor:
    return _cross_entropy(logits, targets, ignore_index, reduction)[0]


@torch.library.custom_op(f"{NS}::fused_linear_cross_entropy", mutates_args=())
def _fused_linear_cross_entropy(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor], ignore_index: int, reduction: str,
    grad_hidden: bool, grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The loss and the gradients it already computed (empty where not asked): see the eager op."""
    from llm_course.backends.triton_ops.fused_linear_cross_entropy import fused_linear_cross_entropy_forward

    loss, gh, gw, gb = fused_linear_cross_entropy_forward(hidden, weight, targets, bias, ignore_index, reduction,
                                                          grads=(grad_hidden, grad_weight, grad_bias))  # fmt: skip
    empty = hidden.new_empty(0)
    return loss, *(empty if g is None else g for g in (gh, gw, gb))


@_fused_linear_cross_entropy.register_fake
def _(hidden, weight, targets, bias, ignore_index, reduction, grad_hidden, grad_weight, grad_bias):
    empty = hidden.new_empty(0)
    loss = hidden.new_empty((), dtype=torch.float32)
    gb = _new(bias) if grad_bias and bias is not None else empty
    return loss, _new(hidden) if grad_hidden else empty, _new(weight) if grad_weight else empty, gb


def _fused_setup(ctx, inputs, output):
    _, gh, gw, gb = output
    _no_grad_outputs(ctx, gh, gw, gb)
    ctx.save_for_backward(gh, gw, gb)
    ctx.asked = inputs[6:9]
    ctx.has_bias = inputs[3] is not None


def _fused_grad(ctx, dloss, *_):
    g = dloss.to(torch.float32)
    grads = [(t * g).to(t.dtype) if asked else None for t, asked in zip(ctx.saved_tensors, ctx.asked)]
    return grads[0], grads[1], None, grads[2] if ctx.has_bias else None, None, None, None, None, None


_fused_linear_cross_entropy.register_autograd(_fused_grad, setup_context=_fused_setup)


def fused_linear_cross_entropy(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor],
    ignore_index: int, reduction: str, grads: tuple[bool, bool, bool],
) -> Tensor:  # fmt: skip
    return _fused_linear_cross_entropy(hidden, weight, targets, bias, ignore_index, reduction, *grads)[0]

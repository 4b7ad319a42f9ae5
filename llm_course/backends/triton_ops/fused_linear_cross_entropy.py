"""The output layer and the loss together, without ever holding the (N, V) logits.

At the end of a language model, ``logits = hidden @ lm_head.weight.T`` is (N, V): for
N = 16,384 tokens and Qwen2's V = 151,936 that is 2.5 G numbers, 10 GB in float32,
and the backward allocates its gradient as much again. Yet the loss is one number
and each row's loss needs only its own row of logits.

So take the rows a chunk at a time (``chunk`` rows, a few hundred MB of logits)::

    for each chunk of rows [s, e):
        logits = hidden[s:e] @ weight.T (+ bias)            (chunk, V)    one matmul
        loss[s:e], and IN PLACE logits <- d loss / d logits           one Triton kernel
        grad_hidden[s:e]  = logits @ weight                 (chunk, C)    one matmul
        grad_weight      += logits.T @ hidden[s:e]          (V, C)        one matmul
        grad_bias        += logits.sum(0)                   (V,)

The gradients are computed **during the forward**, while each chunk of logits is
there (the idea of Liger-Kernel's fused linear cross-entropy): the backward only
multiplies them by the incoming gradient. Peak memory: one chunk of logits plus the
gradients the backward would need anyway. The price: the forward does the backward's
work (its matmuls), even when only the loss is wanted -- so it skips the gradients
when no input requires one or autograd is off (evaluation).

The matmuls are torch's (cuBLAS on a GPU); the loss and its gradient are the
cross-entropy kernel of ``cross_entropy.py``. Gradients of the counted rows carry
1/n (mean) or 1 (sum); the weight and bias gradients are accumulated in float32.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_tensor, check_tensors  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.cross_entropy import TARGET_DTYPES, cross_entropy_rows, reduce_rows  # noqa: E402
from llm_course.backends.triton_ops.launch import next_power_of_2  # noqa: E402

OP = "fused_linear_cross_entropy"
CHUNK_BYTES = 256 * 2**20  # about how much memory one chunk of logits may take
# cuBLAS runs at full speed only when every row of a matrix starts on a 16-byte boundary. With an
# odd vocabulary (GPT-2's 50,257) the rows of the logits do not, and it falls back to older kernels
# several times slower: on an H200 they took 31 of the 70 ms of a GPT-2 124M training step. So the
# products run over a vocabulary padded to a multiple of VOCAB_ALIGN with zero rows of the weight:
# the extra logits are exactly 0, the loss kernel reads only the first V columns, and the extra
# columns of the gradient stay 0, so they add nothing to grad_hidden and are cut from grad_weight.
VOCAB_ALIGN = 64


def default_chunk_rows(n_rows: int, vocab: int, element_size: int) -> int:
    """Rows per chunk: a power of two with chunk x V logits within CHUNK_BYTES (at least 1, at most N)."""
    rows = max(1, CHUNK_BYTES // max(1, vocab * element_size))
    rows = 1 << (rows.bit_length() - 1)  # the power of two at most rows
    return max(1, min(rows, next_power_of_2(max(n_rows, 1))))


def accumulate_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc + a @ b`` in float32 (acc float32; a, b float32, or half-precision products accumulated in float32).

    On a GPU a half-precision product goes to cuBLAS with ``out_dtype=float32``: it multiplies
    in bf16/fp16, accumulates in float32 and adds acc in its epilogue, one kernel. Elsewhere it is
    a product rounded to the inputs' dtype, then cast and added (two more passes over (V, C)).
    """
    if a.dtype == torch.float32:
        return acc.addmm_(a, b)
    if acc.is_cuda:
        return torch.addmm(acc, a, b, out_dtype=torch.float32)
    return acc.add_((a @ b).float())


def _check(hidden, weight, targets, bias, ignore_index: int, reduction: str) -> None:
    # the op's check: shapes that agree, one device, one float dtype, int targets, valid options
    contract.fused_linear_cross_entropy(hidden, weight, targets, bias, ignore_index=ignore_index, reduction=reduction)
    check_tensors(OP, hidden=hidden, weight=weight, bias=bias)  # and the kernel's own: a device Triton runs on, a dtype it supports
    check_tensor(OP, "targets", targets, dtypes=TARGET_DTYPES)


def fused_linear_cross_entropy_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    grads: tuple[bool, bool, bool] = (False, False, False),
    chunk_rows: int | None = None,
):
    """The loss (a float32 scalar) and, where ``grads`` (hidden, weight, bias) asks, the gradients of the loss.

    hidden (N, C), weight (V, C), targets (N,), bias (V,) or None. Returns
    ``(loss, grad_hidden, grad_weight, grad_bias)`` (None for each one not asked).
    """
    _check(hidden, weight, targets, bias, ignore_index, reduction)
    return _forward(hidden, weight, targets, bias, ignore_index, reduction, grads=grads, chunk_rows=chunk_rows)


def _forward(hidden, weight, targets, bias=None, ignore_index=-100, reduction="mean", *,
             grads=(False, False, False), chunk_rows=None):  # fmt: skip
    """``fused_linear_cross_entropy_forward`` without the input checks: for inputs already checked."""
    N, C = hidden.shape
    V = weight.shape[0]
    Vp = -(-V // VOCAB_ALIGN) * VOCAB_ALIGN  # the products' vocabulary, padded (see VOCAB_ALIGN)
    if Vp != V:
        weight = torch.nn.functional.pad(weight, (0, 0, 0, Vp - V))  # (Vp, C): zero rows past V
        bias = None if bias is None else torch.nn.functional.pad(bias, (0, Vp - V))  # (Vp,)
    want_h, want_w, want_b = grads
    want_b = want_b and bias is not None
    any_grad = want_h or want_w or want_b
    chunk = chunk_rows or default_chunk_rows(N, V, hidden.element_size())
    dev = hidden.device

    loss_rows = torch.empty(N, dtype=torch.float32, device=dev)
    _, factor = reduce_rows(loss_rows[:0], targets, ignore_index, reduction)  # 1/n or 1, known before any chunk
    scale = factor.reshape(1) if any_grad else None
    grad_hidden = torch.empty(N, C, dtype=hidden.dtype, device=dev) if want_h else None  # (N, C)
    grad_weight = torch.zeros(Vp, C, dtype=torch.float32, device=dev) if want_w else None  # (Vp, C)
    grad_bias = torch.zeros(Vp, dtype=torch.float32, device=dev) if want_b else None  # (Vp,)

    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        h = hidden[s:e]  # (n, C)
        logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)  # (n, Vp), fresh memory
        loss_rows[s:e], _ = cross_entropy_rows(logits[:, :V], targets[s:e], ignore_index, grad_scale=scale)
        if not any_grad:
            continue
        dlogits = logits  # (n, Vp): the kernel wrote the gradient over the first V logits; the rest are 0
        if want_h:
            torch.mm(dlogits, weight, out=grad_hidden[s:e])  # (n, C)
        if want_w:
            grad_weight = accumulate_product(grad_weight, dlogits.T, h)  # (Vp, C) += (Vp, n) @ (n, C)
        if want_b:
            grad_bias += dlogits.float().sum(0)
        del logits, dlogits

    loss = loss_rows.sum() * factor
    if grad_weight is not None:
        grad_weight = grad_weight[:V].to(weight.dtype)  # (V, C)
    if grad_bias is not None:
        grad_bias = grad_bias[:V].to(bias.dtype)  # (V,)
    return loss, grad_hidden, grad_weight, grad_bias


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, ignore_index, reduction, grads):
        with torch.autocast(hidden.device.type, enabled=False):  # the inputs' dtype, whatever autocast says
            loss, gh, gw, gb = _forward(hidden, weight, targets, bias, ignore_index, reduction, grads=grads)  # checked already
        ctx.save_for_backward(gh, gw, gb)
        return loss

    @staticmethod
    @once_differentiable  # the gradients were computed by kernels in the forward: no graph to differentiate again
    def backward(ctx, dloss):
        gh, gw, gb = ctx.saved_tensors
        g = dloss.to(torch.float32)
        scaled = [None if t is None else (t * g).to(t.dtype) for t in (gh, gw, gb)]
        return scaled[0], scaled[1], None, scaled[2], None, None, None


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, targets)`` chunk by chunk; differentiable in hidden, weight, bias."""
    _check(hidden, weight, targets, bias, ignore_index, reduction)  # once, here: the Function trusts its inputs
    on = torch.is_grad_enabled()
    grads = tuple(on and t is not None and t.requires_grad for t in (hidden, weight, bias))
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.fused_linear_cross_entropy(hidden, weight, targets, bias, ignore_index, reduction, grads)
    return FusedLinearCrossEntropyFunction.apply(hidden, weight, targets, bias, ignore_index, reduction, grads)

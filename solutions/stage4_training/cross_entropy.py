"""Stage 4 exercise: the cross-entropy loss in Triton, forward and backward (exercise cross_entropy).

The loss of a language model compares each position's V logits x with the token
that really came next, t:

    loss = -log softmax(x)_t = logsumexp(x) - x_t,     logsumexp(x) = log sum_j exp(x_j)
    d loss / d x_j = softmax(x)_j - [j == t] = exp(x_j - logsumexp(x)) - [j == t]

For a batch of N rows the loss is the mean over the rows whose target is not
``ignore_index`` (-100: padding, or a prompt the model is not trained on); so each
counted row's gradient is scaled by 1 / n, n the number of counted rows, and an
ignored row gets loss 0 and gradient 0.

Two things make it a kernel worth writing:

* **Overflow.** Logits of a few hundred already overflow ``exp`` in float32
  (exp(89) = inf). Subtract the row's max m first:
  ``logsumexp(x) = m + log sum_j exp(x_j - m)``, every term <= 1.
* **Size.** With V = 151,936 (Qwen2) and N = 8 * 1024 positions the logits are
  1.2 G numbers. PyTorch's ``log_softmax`` then ``nll_loss`` writes a second
  (N, V) tensor; here each row is read once in the forward, keeping only two
  float32 per row (the loss, and the logsumexp ``lse`` for the backward), and once
  in the backward, where ``softmax(x)_j = exp(x_j - lse)`` needs no second pass for
  the max. A row is too long for one block, so it is walked ``BLOCK_SIZE`` logits
  at a time with the *online* logsumexp of stage 2: a running max m and a running
  sum d = sum exp(x - m), rescaled by exp(m - m_new) when the max grows.

You write the two kernels; the launchers and the autograd wrapper are given.
:func:`cross_entropy` has the signature of ``llm_course.ops.cross_entropy``: the
``exercises`` backend runs your kernels through it. The course's kernel is
``llm_course/backends/triton_ops/cross_entropy.py`` (look once you are done).
"""

from __future__ import annotations

from llm_course.device import configure_triton, has_gpu, is_interpreter

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends.triton_ops.checks import check_same_device, check_tensor  # noqa: E402
from llm_course.grading import require_written  # noqa: E402

OP = "cross_entropy (exercise)"


# --- the kernels -----------------------------------------------------------------------------


@triton.jit
def cross_entropy_fwd_kernel(
    LOGITS, TARGETS, LOSS, LSE,
    stride_row, n_cols, ignore_index,
    BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    """The loss and the logsumexp of one row: ``row = tl.program_id(0)``.

    * LOGITS (N, V): row ``row`` starts at ``LOGITS + row * stride_row``, its
      elements are contiguous (V = n_cols, any size, not a power of two);
      float32 or float16: compute in float32 (``.to(tl.float32)``).
    * TARGETS (N,) int64: the row's target t, in [0, V) or equal to ignore_index.
    * LOSS, LSE (N,) float32, written here: ``LSE[row] = logsumexp(x)`` (for every
      row, ignored or not), ``LOSS[row] = lse - x_t`` or 0 when t == ignore_index.

    Steps: running max ``m = -inf`` and sum ``d = 0.0``; for each block of
    BLOCK_SIZE columns starting at 0, 1 * BLOCK_SIZE, ...: load it masked to
    cols < n_cols with ``other=-inf`` (exp(-inf) = 0: the padding adds nothing),
    ``m_new = max(m, max(x))``, ``d = d * exp(m - m_new) + sum(exp(x - m_new))``,
    ``m = m_new``. Then ``lse = m + log(d)``. Load x_t (one element) only when the
    row is counted: ``mask=t != ignore_index`` (t = -100 is not an address of the row).

    Hint: ``tl.load(TARGETS + row)`` gives t; ``row = tl.program_id(0).to(tl.int64)``
    keeps ``row * stride_row`` from overflowing int32 for large N * V.
    """
    # BEGIN EXERCISE cross_entropy
    # stub raises: "write cross_entropy_fwd_kernel: walk the row in blocks with a running max m and sum d = sum exp(x - m), lse = m + log(d); store lse, and lse - x_t as the loss (0 when t == ignore_index)"
    row = tl.program_id(0).to(tl.int64)
    x_row = LOGITS + row * stride_row
    t = tl.load(TARGETS + row)
    counted = t != ignore_index
    m = -float("inf")  # running max of the row
    d = 0.0  # running sum of exp(x - m)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        x = tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)  # (BLOCK_SIZE,)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)  # rescale what was summed under the old max
        m = m_new
    lse = m + tl.log(d)
    x_t = tl.load(x_row + t, mask=counted, other=0.0).to(tl.float32)
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, tl.where(counted, lse - x_t, 0.0))
    # END EXERCISE cross_entropy


@triton.jit
def cross_entropy_bwd_kernel(
    LOGITS, TARGETS, LSE, GRAD, SCALE,
    stride_row, stride_grad_row, n_cols, ignore_index,
    BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    """The gradient of one row: ``GRAD[row, j] = (exp(x_j - lse) - [j == t]) * scale``.

    * LOGITS, TARGETS as in the forward; LSE (N,) float32, the forward's logsumexp.
    * SCALE: a pointer to ONE float32, the factor every counted row's gradient
      carries (the incoming gradient of the loss, divided by the number of counted
      rows for the mean). It lives on the device: load it, never read it on the host.
    * GRAD (N, V) in the logits' dtype, row ``row`` at ``GRAD + row * stride_grad_row``:
      write every one of its n_cols elements; all 0 when t == ignore_index.

    Steps: load t, lse and the scale (0 when the row is ignored); walk the row in
    blocks of BLOCK_SIZE columns: load x (masked), ``p = exp(x - lse)``, subtract 1
    where ``cols == t``, multiply by the scale, store in GRAD's dtype
    (``.to(GRAD.dtype.element_ty)``) masked to cols < n_cols.
    """
    # BEGIN EXERCISE cross_entropy
    # stub raises: "write cross_entropy_bwd_kernel: per block of the row, (exp(x - lse) - (cols == t)) * scale, stored masked; scale = 0 for an ignored row"
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(TARGETS + row)
    lse = tl.load(LSE + row)
    scale = tl.where(t != ignore_index, tl.load(SCALE), 0.0)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        x = tl.load(LOGITS + row * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
        g = (tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)) * scale  # (softmax - onehot) * scale
        tl.store(GRAD + row * stride_grad_row + cols, g.to(GRAD.dtype.element_ty), mask=mask)
    # END EXERCISE cross_entropy


# --- the launchers ---------------------------------------------------------------------------


def default_block(n_cols: int) -> int:
    """Logits read per step of the walk: small in the interpreter (so the tests walk several blocks), 4096 at most on a GPU."""
    cap = 128 if is_interpreter() or not has_gpu() else 4096
    return min(cap, triton.next_power_of_2(max(1, n_cols)))


def _launch_options(block: int) -> dict:
    return {} if is_interpreter() else dict(num_warps=min(16, max(4, block // 256)))


def check_inputs(logits, targets) -> None:
    """Refuse, with a clear error, what these kernels do not handle."""
    check_tensor(OP, "logits", logits, ndim=2)
    check_tensor(OP, "targets", targets, dtypes=(torch.int64, torch.int32), ndim=1)
    check_same_device(OP, logits=logits, targets=targets)
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{OP}: targets has shape {tuple(targets.shape)}, expected ({logits.shape[0]},) for logits {tuple(logits.shape)}")


def _output(out, shape, dtype, device, name):
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    check_tensor(OP, name, out, dtypes=(dtype,))
    if tuple(out.shape) != tuple(shape) or out.stride(-1) != 1:
        raise ValueError(f"{OP}: {name} must be {tuple(shape)} with contiguous rows, got {tuple(out.shape)} strides {out.stride()}")
    return out


def cross_entropy_forward(logits, targets, ignore_index=-100, *, block_size=None, loss=None, lse=None):
    """Run :func:`cross_entropy_fwd_kernel`: logits (N, V), targets (N,) -> (loss (N,), lse (N,)) float32.

    ``loss`` and ``lse`` may be given to be written into.
    """
    check_inputs(logits, targets)
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    N, V = logits.shape
    loss = _output(loss, (N,), torch.float32, logits.device, "loss")
    lse = _output(lse, (N,), torch.float32, logits.device, "lse")
    if N == 0:
        return loss, lse
    require_written(cross_entropy_fwd_kernel)
    block = block_size or default_block(V)
    cross_entropy_fwd_kernel[(N,)](logits, targets.to(torch.int64), loss, lse, logits.stride(0), V, ignore_index,
                                   BLOCK_SIZE=block, **_launch_options(block))  # fmt: skip
    return loss, lse


def cross_entropy_backward(logits, targets, lse, scale, ignore_index=-100, *, block_size=None, grad=None):
    """Run :func:`cross_entropy_bwd_kernel` -> d loss / d logits (N, V) in the logits' dtype.

    ``scale`` is a one-element float32 tensor on the logits' device; ``grad`` may be given to be written into.
    """
    check_inputs(logits, targets)
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    N, V = logits.shape
    grad = _output(grad, (N, V), logits.dtype, logits.device, "grad")
    if N == 0:
        return grad
    require_written(cross_entropy_bwd_kernel)
    block = block_size or default_block(V)
    cross_entropy_bwd_kernel[(N,)](logits, targets.to(torch.int64), lse, grad, scale.to(torch.float32).reshape(1),
                                   logits.stride(0), grad.stride(0), V, ignore_index, BLOCK_SIZE=block, **_launch_options(block))  # fmt: skip
    return grad


class CrossEntropy(torch.autograd.Function):
    """The loss from the forward kernel; its gradient from the backward kernel."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, reduction):
        rows, lse = cross_entropy_forward(logits, targets, ignore_index)
        if reduction == "sum":
            factor = torch.ones((), dtype=torch.float32, device=logits.device)
        else:  # "mean" over the counted rows (0, not NaN, when there is none)
            factor = 1.0 / (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
        ctx.save_for_backward(logits, targets, lse, factor)
        ctx.ignore_index = ignore_index
        return rows.sum() * factor

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss):
        logits, targets, lse, factor = ctx.saved_tensors
        grad = cross_entropy_backward(logits, targets, lse, dloss.to(torch.float32) * factor, ctx.ignore_index)
        return grad, None, None, None


# --- the op -----------------------------------------------------------------------------------


def cross_entropy(logits, targets, *, ignore_index=-100, reduction="mean"):
    """``llm_course.ops.cross_entropy`` with your kernels: logits (N, V), targets (N,) -> a float32 scalar.

    Differentiable in the logits. ``reduction`` is ``"mean"`` (over the counted
    rows) or ``"sum"``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{OP}: reduction must be 'mean' or 'sum', got {reduction!r}")
    check_inputs(logits, targets)
    require_written(cross_entropy_fwd_kernel, cross_entropy_bwd_kernel)
    return CrossEntropy.apply(logits, targets, ignore_index, reduction)

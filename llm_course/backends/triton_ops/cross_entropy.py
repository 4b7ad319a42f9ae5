"""Cross-entropy over a large vocabulary: one program per row, the row read in blocks.

For a row x of V logits and its target t (see ``torch_ops/cross_entropy.py``)::

    loss = logsumexp(x) - x_t            d loss / d x_j = softmax(x)_j - [j == t]

A row of V = 151,936 logits does not fit in registers, so the forward walks it
``BLOCK_SIZE`` logits at a time with the **online logsumexp** of the looped softmax
kernel: a running max m and a running sum d = sum exp(x - m), the sum rescaled by
exp(m - m') whenever the max grows to m'. At the end ``lse = m + log d``, and the
target's logit is one more load. One read of the row, one float32 written per row
(its loss) and one saved for the backward (its lse).

Both walks read the whole blocks without a mask and only the last, partial block
with one. Triton turns a load into wide (16-byte) vector loads only when it can
prove the mask constant over each vector, which ``cols < n_cols`` is not when V is
not a multiple of 16: with every block masked, GPT-2's 50,257 columns were read one
element at a time, at 1.6 TB/s on an H200 against 3.7 TB/s for V = 151,936.

The backward needs no second walk for the max: with the saved lse,
``softmax(x)_j = exp(x_j - lse)``, so it reads the row once and writes its gradient
once, scaled by the incoming gradient (divided by the number of counted rows for
``reduction="mean"``). That scale is a tensor read inside the kernel, never on the
host: nothing waits for the GPU.

``cross_entropy_rows(..., grad_scale=s)`` also does both in one launch, writing the
gradient *in place over the logits* as soon as the lse of a row is known (a second
walk over the row). ``fused_linear_cross_entropy.py`` uses it on chunks of logits it
has just computed and will not need again.

Rows whose target is ``ignore_index`` give 0 and a zero gradient; a target outside
[0, V) gives a NaN loss (the kernel never reads outside the row; the targets are
never read on the host). float32, float16, bfloat16 (GPU only) logits; computed in
float32; the loss is float32.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_same_device, check_tensor  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.launch import last_dim_contiguous, next_power_of_2, num_warps_for  # noqa: E402

OP = "cross_entropy"
MAX_BLOCK_SIZE = 4096  # logits of a row handled at once (the row is walked in blocks of this many)
TARGET_DTYPES = (torch.int64, torch.int32)


# --- kernels -----------------------------------------------------------------------------


@triton.jit
def _grad_block(x, cols, target, lse, scale):
    """(softmax(x) - onehot(target)) * scale on one block of a row, x in float32."""
    return (tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)) * scale


@triton.jit
def _write_row_grad(x_row, g_row, target, lse, scale, n_cols, BLOCK_SIZE: tl.constexpr):
    """g[j] = (exp(x[j] - lse) - [j == target]) * scale over one row (g_row may be x_row: in place)."""
    n_full = (n_cols // BLOCK_SIZE) * BLOCK_SIZE
    for start in range(0, n_full, BLOCK_SIZE):  # whole blocks: no mask, vector loads and stores
        cols = start + tl.arange(0, BLOCK_SIZE)
        x = tl.load(x_row + cols).to(tl.float32)
        tl.store(g_row + cols, _grad_block(x, cols, target, lse, scale).to(g_row.dtype.element_ty))
    if n_full < n_cols:  # the last, partial block
        cols = n_full + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(g_row + cols, _grad_block(x, cols, target, lse, scale).to(g_row.dtype.element_ty), mask=mask)


@triton.jit
def _lse_step(m, d, x):
    """One block of the online logsumexp: (m, d) over the blocks so far, x (BLOCK,) float32 -> (m', d')."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a row of -inf so far: avoid inf - inf
    d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
    return m_new, d


@triton.jit
def cross_entropy_fwd_kernel(
    logits_ptr, targets_ptr, loss_ptr, lse_ptr, grad_ptr, scale_ptr,
    logits_row_stride, grad_row_stride, n_cols, ignore_index,
    BLOCK_SIZE: tl.constexpr, WRITE_GRAD: tl.constexpr,
):  # fmt: skip
    """One program = one row of logits (N, V): its loss and lse; with WRITE_GRAD its gradient too."""
    row = tl.program_id(0).to(tl.int64)
    x_row = logits_ptr + row * logits_row_stride
    target = tl.load(targets_ptr + row).to(tl.int64)
    counted = target != ignore_index
    in_range = (target >= 0) & (target < n_cols)
    # online logsumexp: running max m and running sum d = sum exp(x - m) over the blocks seen so far
    m = -float("inf")
    d = 0.0
    n_full = (n_cols // BLOCK_SIZE) * BLOCK_SIZE
    for start in range(0, n_full, BLOCK_SIZE):  # whole blocks: no mask, vector loads
        m, d = _lse_step(m, d, tl.load(x_row + start + tl.arange(0, BLOCK_SIZE)).to(tl.float32))
    if n_full < n_cols:  # the last, partial block
        cols = n_full + tl.arange(0, BLOCK_SIZE)
        m, d = _lse_step(m, d, tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32))
    lse = m + tl.log(d)
    x_t = tl.load(x_row + target, mask=counted & in_range, other=0.0).to(tl.float32)
    loss = tl.where(counted, tl.where(in_range, lse - x_t, float("nan")), 0.0)
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)
    if WRITE_GRAD:
        scale = tl.where(counted, tl.load(scale_ptr).to(tl.float32), 0.0)
        _write_row_grad(x_row, grad_ptr + row * grad_row_stride, target, lse, scale, n_cols, BLOCK_SIZE)


@triton.jit
def cross_entropy_bwd_kernel(
    logits_ptr, targets_ptr, lse_ptr, grad_ptr, scale_ptr,
    logits_row_stride, grad_row_stride, n_cols, ignore_index,
    BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    """One program = one row: its gradient from the saved lse, scaled by *scale_ptr (0 for an ignored row)."""
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets_ptr + row).to(tl.int64)
    lse = tl.load(lse_ptr + row)
    scale = tl.where(target != ignore_index, tl.load(scale_ptr).to(tl.float32), 0.0)
    _write_row_grad(logits_ptr + row * logits_row_stride, grad_ptr + row * grad_row_stride,
                    target, lse, scale, n_cols, BLOCK_SIZE)  # fmt: skip


# --- launchers ---------------------------------------------------------------------------


def _block(n_cols: int, block_size: int | None) -> tuple[int, int]:
    block = min(next_power_of_2(max(n_cols, 1)), block_size or MAX_BLOCK_SIZE)
    return block, num_warps_for(block)


def _check(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> None:
    """``cross_entropy``'s check: the op's, then the kernels' own."""
    contract.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)  # shapes, kinds, options
    check_tensor(OP, "logits", logits)  # a device Triton runs on, a dtype the kernels support
    check_tensor(OP, "targets", targets, dtypes=TARGET_DTYPES)


def _check_launcher_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """The public launchers' own check (``cross_entropy`` checked its inputs already and calls them unchecked)."""
    check_tensor(OP, "logits", logits, ndim=2)
    check_tensor(OP, "targets", targets, dtypes=TARGET_DTYPES, ndim=1)
    check_same_device(OP, logits=logits, targets=targets)
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{OP}: targets has shape {tuple(targets.shape)}, expected ({logits.shape[0]},)")


def cross_entropy_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    *,
    grad_scale: torch.Tensor | None = None,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and lse of every row: logits (N, V), targets (N,) -> (loss (N,), lse (N,)), both float32.

    With ``grad_scale`` (a one-element float tensor s on the logits' device) the
    gradient ``(softmax - onehot) * s`` of each counted row is written **over the
    logits** (0 for ignored rows): the caller must not need the logits afterwards.
    ``block_size`` (a power of two) overrides how many logits a step of the walk reads.
    """
    _check_launcher_inputs(logits, targets)
    return _loss_rows(logits, targets, ignore_index, grad_scale=grad_scale, block_size=block_size)


def _loss_rows(logits, targets, ignore_index=-100, *, grad_scale=None, block_size=None):
    """``cross_entropy_rows`` without the input checks: for inputs already checked."""
    if logits.stride(-1) != 1:
        if grad_scale is not None:
            raise ValueError(f"{OP}: logits must have a last-dim stride of 1 to receive the gradient in place")
        logits = logits.contiguous()
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    lse = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N == 0:
        return loss, lse
    block, num_warps = _block(V, block_size)
    write_grad = grad_scale is not None
    scale = grad_scale if write_grad else loss  # any float pointer when unused
    cross_entropy_fwd_kernel[(N,)](
        logits, targets, loss, lse, logits, scale, logits.stride(0), logits.stride(0), V, ignore_index,
        BLOCK_SIZE=block, WRITE_GRAD=write_grad, num_warps=num_warps,
    )  # fmt: skip
    return loss, lse


def cross_entropy_backward(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    scale: torch.Tensor,
    ignore_index: int = -100,
    *,
    block_size: int | None = None,
) -> torch.Tensor:
    """d loss / d logits (N, V) in the logits' dtype, from the saved lse (N,) and a one-element scale tensor."""
    _check_launcher_inputs(logits, targets)
    return _loss_grad(logits, targets, lse, scale, ignore_index, block_size=block_size)


def _loss_grad(logits, targets, lse, scale, ignore_index=-100, *, block_size=None):
    """``cross_entropy_backward`` without the input checks: for inputs already checked."""
    logits = last_dim_contiguous(logits)
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    N, V = logits.shape
    if N == 0:
        return grad
    block, num_warps = _block(V, block_size)
    cross_entropy_bwd_kernel[(N,)](
        logits, targets, lse, grad, scale, logits.stride(0), grad.stride(0), V, ignore_index,
        BLOCK_SIZE=block, num_warps=num_warps,
    )  # fmt: skip
    return grad


def reduce_rows(loss_rows: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str):
    """(the scalar loss, the factor 1/n or 1 that each row's gradient carries) as device tensors.

    "mean" divides by the number of counted rows (at least 1: no counted row gives 0).
    """
    total = loss_rows.sum()
    if reduction == "sum":
        return total, torch.ones((), dtype=torch.float32, device=loss_rows.device)
    inv_n = 1.0 / (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
    return total * inv_n, inv_n


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index, reduction):
        loss_rows, lse = _loss_rows(logits, targets, ignore_index)  # checked by cross_entropy
        loss, factor = reduce_rows(loss_rows, targets, ignore_index, reduction)
        ctx.save_for_backward(logits, targets, lse, factor)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dloss):
        logits, targets, lse, factor = ctx.saved_tensors
        scale = (dloss.to(torch.float32) * factor).reshape(1)  # stays on the device
        return _loss_grad(logits, targets, lse, scale, ctx.ignore_index), None, None, None


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy with the Triton kernels; differentiable in the logits. (N, V), (N,) -> scalar float32."""
    _check(logits, targets, ignore_index, reduction)  # once, here: CrossEntropyFunction trusts its inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.cross_entropy(logits, targets, ignore_index, reduction)
    return CrossEntropyFunction.apply(logits, targets, ignore_index, reduction)

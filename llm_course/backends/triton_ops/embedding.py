"""Embedding lookup in Triton: a gather forward, a scatter-add backward.

    out[t, :] = weight[ids[t], :]                       forward: copy one row per token
    dweight[ids[t], :] += dout[t, :]  for every t       backward: add each row back where it came from

The grid is (tokens, column blocks): program (t, j) moves columns
``[j * BLOCK_C, (j + 1) * BLOCK_C)`` of token t's row. The forward is a pure copy
(it reads and writes ``T * C`` elements; the table's other rows are never touched).

The backward cannot simply store: two tokens with the same id (the word "the",
twice in a batch) write the same row of dweight. ``tl.atomic_add`` makes each
addition indivisible, so no update is lost. The sums are accumulated in a float32
(V, C) buffer and cast to the weight's dtype at the end (for a float16 or bfloat16
table, that buffer is the backward's extra memory). Atomics add in whatever order
the programs run, so on a GPU the last bits of a row used many times can differ
between runs; PyTorch's own embedding backward sorts the ids instead to be
deterministic.

Layers: the kernels, the launchers, ``EmbeddingFunction``, then ``embedding``
(the op's signature), which checks the inputs once. The reference is in
``llm_course/backends/torch_ops/embedding.py``.
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
from llm_course.backends.torch_ops.embedding import check_ids  # noqa: E402
from llm_course.backends.triton_ops.checks import check_tensor  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.launch import cdiv, next_power_of_2  # noqa: E402

OP = "embedding"
NUM_WARPS = 4


def block_c(n_cols: int) -> int:
    """Columns per program: the row in one block up to 1024, else blocks of 1024."""
    return min(next_power_of_2(n_cols), 1024)


# --- kernels -----------------------------------------------------------------------------


@triton.jit
def embedding_fwd_kernel(ids_ptr, w_ptr, out_ptr, n_cols, w_row_stride, BLOCK_C: tl.constexpr):
    """Program (t, j): out[t, cols] = w[ids[t], cols] for column block j. ids (T,); w (V, C); out (T, C) contiguous."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < n_cols
    row = tl.load(ids_ptr + t).to(tl.int64)  # int64: row * stride may pass 2**31
    vals = tl.load(w_ptr + row * w_row_stride + cols, mask=mask)
    tl.store(out_ptr + t * n_cols + cols, vals, mask=mask)


@triton.jit
def embedding_bwd_kernel(ids_ptr, dout_ptr, dw_ptr, n_cols, BLOCK_C: tl.constexpr):
    """Program (t, j): dw[ids[t], cols] += dout[t, cols], atomically. dout (T, C) contiguous; dw (V, C) float32."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < n_cols
    row = tl.load(ids_ptr + t).to(tl.int64)
    d = tl.load(dout_ptr + t * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(dw_ptr + row * n_cols + cols, d, mask=mask)


# --- launchers ---------------------------------------------------------------------------


def embedding_forward(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ids (T,) int, in range; weight (V, C) with stride 1 along C -> out (T, C) in weight's dtype."""
    T, C = ids.shape[0], weight.shape[1]
    out = torch.empty((T, C), dtype=weight.dtype, device=weight.device)
    if T and C:
        BLOCK_C = block_c(C)
        grid = (T, cdiv(C, BLOCK_C))
        embedding_fwd_kernel[grid](ids, weight, out, C, weight.stride(0), BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return out


def embedding_backward(dout: torch.Tensor, ids: torch.Tensor, num_rows: int) -> torch.Tensor:
    """dout (T, C), ids (T,) -> dweight (V, C) float32, zero in the rows no token looked up."""
    T, C = dout.shape
    dw = torch.zeros((num_rows, C), dtype=torch.float32, device=dout.device)
    if T and C:
        dout = dout.contiguous()
        BLOCK_C = block_c(C)
        grid = (T, cdiv(C, BLOCK_C))
        embedding_bwd_kernel[grid](ids, dout, dw, C, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return dw


class EmbeddingFunction(torch.autograd.Function):
    """Saves the ids only: the backward needs to know where each row went, not what it held."""

    @staticmethod
    def forward(ctx, ids, weight):
        flat = ids.reshape(-1).contiguous()  # (T,)
        w = weight if weight.stride(1) == 1 else weight.contiguous()
        out = embedding_forward(flat, w)  # (T, C)
        ctx.save_for_backward(flat)
        ctx.num_rows, ctx.weight_dtype = weight.shape[0], weight.dtype
        return out.view(*ids.shape, weight.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        (flat,) = ctx.saved_tensors
        dw = embedding_backward(dout.reshape(-1, dout.shape[-1]), flat, ctx.num_rows)
        return None, dw.to(ctx.weight_dtype)


def _check(ids: torch.Tensor, weight: torch.Tensor) -> None:
    contract.embedding(ids, weight)  # the op's check: int ids, a float (V, C) table, one device
    check_tensor(OP, "weight", weight)  # and the kernels' own: a device Triton runs on, a dtype they support,
    check_ids(OP, ids, weight.shape[0])  # and every id a row of the table (the kernel reads where it points)


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` picked by ``ids`` with the Triton kernels; differentiable in weight.

    ids (...) int64 or int32 in 0 .. V-1; weight (V, C) -> (..., C) in weight's dtype.
    """
    _check(ids, weight)  # once, here: the launchers trust their inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.embedding(ids, weight)
    return EmbeddingFunction.apply(ids, weight)

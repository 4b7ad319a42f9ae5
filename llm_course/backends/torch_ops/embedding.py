"""Embedding lookup, the reference: each token id picks one row of a table.

    out[..., :] = weight[ids[...], :]          ids (...) integers in 0 .. V-1, weight (V, C) -> (..., C)

This is how a model turns token ids into vectors (GPT-2's ``wte``, Llama's
``embed_tokens``) and how GPT-2 looks up its learned positions (``wpe``).

The backward is a *scatter-add*: the gradient of ``weight`` is zero except in the
rows that were looked up, and a row looked up k times receives the sum of the k
output gradients. Autograd does that for ``weight[ids]``; the Triton kernel writes
it by hand (``embedding_backward`` below spells it out).

An id outside 0 .. V-1 has no row: it is refused with an error that names it,
rather than left to indexing (on a GPU an out-of-range index is a device-side
assertion that kills the process).
"""

from __future__ import annotations

import torch

from llm_course.device import host_can_read

INDEX_DTYPES = (torch.int64, torch.int32)


def check_ids(op: str, ids: torch.Tensor, num_rows: int) -> None:
    """ids must be an integer tensor with every value in 0 .. num_rows - 1."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{op}: ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: ids must be int64 or int32, got {str(ids.dtype).removeprefix('torch.')}")
    if ids.numel() and host_can_read(ids):  # (not while torch.compile traces or a CUDA graph is captured)
        lo, hi = torch.aminmax(ids)
        lo, hi = int(lo), int(hi)  # one synchronisation with the device: a wrong id must not read past the table
        if lo < 0 or hi >= num_rows:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{op}: id {bad} is outside the table's rows 0 .. {num_rows - 1}")


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` picked by ``ids``: ids (...) int, weight (V, C) -> (..., C) in weight's dtype."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"embedding: weight must be a (V, C) table, got {getattr(weight, 'shape', type(weight).__name__)}")
    check_ids("embedding", ids, weight.shape[0])
    return weight[ids]  # (..., C); autograd's backward of indexing is the scatter-add


def embedding_backward(dout: torch.Tensor, ids: torch.Tensor, num_rows: int) -> torch.Tensor:
    """dweight of the lookup, written out: dout (..., C), ids (...) -> (V, C), summed in float32.

    ``dweight[v] = sum of dout[t] over the tokens t with ids[t] == v``.
    """
    C = dout.shape[-1]
    acc = torch.float64 if dout.dtype == torch.float64 else torch.float32
    dw = torch.zeros(num_rows, C, dtype=acc, device=dout.device)
    dw.index_add_(0, ids.reshape(-1), dout.reshape(-1, C).to(acc))  # (V, C)
    return dw.to(dout.dtype)

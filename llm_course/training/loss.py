"""The pretraining loss: next-token cross-entropy, with or without the (N, V) logits.

    from llm_course.training.loss import causal_lm_loss, loss_fn
    loss_sum, n_tokens = causal_lm_loss(model, input_ids, labels)            # through the logits
    loss_sum, n_tokens = causal_lm_loss(model, input_ids, labels, fused=True)  # never builds them
    loss = loss_fn(model, input_ids, labels)    # the trainer's hook: the mean over counted tokens

``labels`` are already shifted: ``labels[b, t]`` is the token that should follow
``input_ids[b, :t + 1]`` (the data gives ``input_ids = block[:-1], labels = block[1:]``),
and ``-100`` marks a position that counts for nothing.

Why a sum and a count: with gradient accumulation a step has several micro-batches
holding different numbers of real tokens. The mean over the step's tokens is the sum of
every micro-batch's ``loss_sum`` divided once by the sum of their ``n_tokens``; averaging
the micro-batches' means would weigh a token of a short micro-batch more.

``fused=True`` runs the model without its output layer and hands the hidden states
(B*T, C) and ``lm_head.weight`` (V, C) to :func:`llm_course.ops.fused_linear_cross_entropy`,
which (on the Triton backend) computes the loss chunk by chunk of tokens and never holds
the (B*T, V) logits: at Qwen2's vocabulary of 151,936 they are the largest tensor of the
step. To get the hidden states the model is called as usual (through a DDP or
``torch.compile`` wrapper too, so DDP still syncs the gradients) with ``return_hidden=True``:
it stops before its output layer.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops

IGNORE_INDEX = -100


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def output_layer(model: nn.Module) -> nn.Module:
    """The model's ``lm_head`` (through DDP and compile wrappers), with a ``weight`` (V, C)."""
    inner = unwrap(model)
    head = getattr(inner, "lm_head", None)
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise TypeError(f"causal_lm_loss(fused=True): {type(inner).__name__} has no lm_head with a weight")
    return head


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast would compute a matmul in here (the tensor's own outside autocast)."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    fused: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_sum, n_tokens): the summed next-token cross-entropy and the number of counted labels.

    input_ids, labels (B, T) int64; ``loss_sum`` is a float32 scalar, ``n_tokens`` an int64
    scalar tensor on the same device (never read on the host here: no wait for the GPU).
    Runs under the backend in force (``ops.cross_entropy`` / ``ops.fused_linear_cross_entropy``).
    """
    if tuple(labels.shape) != tuple(input_ids.shape):
        raise ValueError(f"causal_lm_loss: labels has shape {tuple(labels.shape)} but input_ids {tuple(input_ids.shape)}; "
                         "labels[b, t] is the target of position t (already shifted)")  # fmt: skip
    targets = labels.reshape(-1)  # (N,) with N = B*T
    n_tokens = (targets != ignore_index).sum()
    if not fused:
        logits = model(input_ids)  # (B, T, V)
        loss_sum = ops.cross_entropy(logits.flatten(0, 1), targets, ignore_index=ignore_index, reduction="sum")
        return loss_sum, n_tokens
    head = output_layer(model)
    hidden = model(input_ids, return_hidden=True)  # (B, T, C): the model without its output layer
    dtype = _compute_dtype(hidden)
    bias = getattr(head, "bias", None)
    loss_sum = ops.fused_linear_cross_entropy(
        hidden.flatten(0, 1).to(dtype), head.weight.to(dtype), targets,
        None if bias is None else bias.to(dtype), ignore_index=ignore_index, reduction="sum",
    )  # fmt: skip
    return loss_sum, n_tokens


def loss_fn(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The trainer's hook: the mean loss over the counted labels (0 when there is none)."""
    loss_sum, n_tokens = causal_lm_loss(model, input_ids, labels)
    return loss_sum / n_tokens.clamp(min=1)


def fused_loss_fn(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`loss_fn` through ``ops.fused_linear_cross_entropy`` (no (B*T, V) logits on the Triton backend)."""
    loss_sum, n_tokens = causal_lm_loss(model, input_ids, labels, fused=True)
    return loss_sum / n_tokens.clamp(min=1)

"""Cross-entropy, the language model's loss, written out step by step.

A model gives each position a row of V scores (logits) over the vocabulary; the
loss of that row is how surprised the model is by the token that actually comes next
(the *target* t)::

    loss_row = -log softmax(x)_t = logsumexp(x) - x_t
    logsumexp(x) = m + log sum_j exp(x_j - m)        m = max_j x_j (stability, as in softmax)

A row whose target is ``ignore_index`` (-100: padding, or a prompt the model is
not trained to predict) counts for nothing. ``reduction="mean"`` averages over the
counted rows, ``"sum"`` adds them (a trainer that accumulates micro-batches sums
and divides once by the number of tokens of the whole batch).

Gradient (what the kernels compute by hand; here autograd does it)::

    d loss_row / d x_j = softmax(x)_j - [j == t]

so the gradient of a row is its softmax with 1 taken off at the target: it needs the
whole (N, V) logits, which is why at vocab 151,936 the logits and their gradient are
the largest tensors of a training step (see ``fused_linear_cross_entropy``).

Written with torch ops, each step is one pass over the (N, V) logits (max, exp-sum,
gather, and as many again backward); the Triton kernel reads each row once forward
(online logsumexp, as in the looped softmax) and once backward.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")


def check_targets_in_range(op: str, targets: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """Every counted target is a class index in [0, V): a clear error instead of an index error.

    Reads the targets on the host (a wait for the GPU): fine for a reference. The
    Triton kernel never reads them on the host: a target out of range gives a NaN loss.
    """
    if torch.compiler.is_compiling() or targets.numel() == 0:
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= n_classes))
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: targets[{i}] = {int(targets[i])} is neither a class index in [0, {n_classes}) "
                         f"nor ignore_index={ignore_index}")  # fmt: skip


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of logits (N, V) against targets (N,) -> a scalar, float32 (float64 for float64 logits).

    Computed in float32 whatever the logits' dtype. When no row is counted (N = 0, or
    every target is ``ignore_index``) the loss is 0, not the NaN of 0/0 that
    ``F.cross_entropy`` gives: a batch of padding adds nothing.
    """
    check_targets_in_range("cross_entropy", targets, logits.shape[-1], ignore_index)
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(compute)  # (N, V)
    counted = targets != ignore_index  # (N,) bool
    safe_targets = torch.where(counted, targets, 0).long()  # (N,): an ignored row looks at class 0, then is dropped
    lse = torch.logsumexp(x, dim=-1)  # (N,)
    target_logit = x.gather(1, safe_targets[:, None]).squeeze(1)  # (N,)
    per_row = torch.where(counted, lse - target_logit, 0.0)  # (N,)
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, targets)``: the output layer and the loss in one call.

    hidden (N, C), weight (V, C) as in nn.Linear (the ``lm_head``), bias (V,) or None,
    targets (N,) -> a scalar. This reference simply builds the (N, V) logits and calls
    :func:`cross_entropy`: at N = 16k tokens and V = 151,936 the logits alone are 10 GB
    in float32, and their gradient as much again. The Triton backend computes the same
    loss chunk by chunk of rows and never holds more than one chunk of logits.
    """
    logits = hidden @ weight.T  # (N, V), in the inputs' dtype
    if bias is not None:
        logits = logits + bias
    return cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)

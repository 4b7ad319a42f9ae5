"""Stage 4 exercise: gradient accumulation over micro-batches (exercise accumulate_gradients).

A batch of 0.5 M tokens (GPT-2's) does not fit in a GPU's memory at once. So it
is cut into *micro-batches*: each one's forward and backward runs on its own,
its graph is freed, and ``loss.backward()`` **adds** its gradient into each
parameter's ``.grad``. After the last micro-batch, ``.grad`` must hold exactly the
gradient that the whole batch would have given in one piece.

The loss of a batch is the mean over its *counted* tokens (labels equal to
``-100``, the padding or masked positions, count for nothing):

    loss = sum over every counted token of the batch of -log p(label) / N,
           N = the number of counted tokens of the whole batch

So each micro-batch contributes ``loss_sum_k / N``: its summed loss divided by
the token count of the **whole** batch. Averaging each micro-batch's own mean
(``loss_sum_k / n_k``, then dividing by the number of micro-batches) is a
different loss as soon as the micro-batches have different numbers of counted
tokens: the tokens of a micro-batch with few of them weigh more.

N is known before any forward: count the labels that are not -100.

The course's trainer (``llm_course/training/trainer.py``) accumulates the same way.
Check your work with ``.venv/bin/llm-course grade 4``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

IGNORE_INDEX = -100


def accumulate_gradients(
    model: torch.nn.Module,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_sum_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    """Leave in each parameter's ``.grad`` the gradient of the token-averaged loss over all micro-batches.

    Args:
        model: the model; its ``.grad`` may hold anything when called (a previous step's gradient).
        micro_batches: ``(input_ids, labels)`` pairs, of any batch sizes; labels
            equal to -100 are not counted. At least one label in all is counted.
        loss_sum_fn: ``loss_sum_fn(model, input_ids, labels)`` -> a scalar tensor,
            the *sum* of the per-token losses of that micro-batch over its counted
            tokens (0 if it has none). Call it once per micro-batch, and call
            ``backward`` on each micro-batch's loss before the next forward (so that
            only one micro-batch's activations are in memory at a time).

    Returns:
        The loss of the whole batch (the mean over all counted tokens) as a Python float.

    Hint: ``model.zero_grad(set_to_none=True)`` first; then N = the sum over the
    micro-batches of ``(labels != -100).sum()``; then for each micro-batch
    ``(loss_sum_fn(...) / N).backward()``, keeping the total with ``.item()`` or
    ``.detach()``.
    """
    # BEGIN EXERCISE accumulate_gradients
    # stub raises: "accumulate_gradients: zero the grads; N = counted labels of all micro-batches; for each micro-batch (loss_sum_fn(model, x, y) / N).backward(); return the summed loss / N"
    model.zero_grad(set_to_none=True)
    n_tokens = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in micro_batches)  # N, of the whole batch
    total = 0.0
    for input_ids, labels in micro_batches:
        loss = loss_sum_fn(model, input_ids, labels) / n_tokens  # this micro-batch's share of the batch mean
        loss.backward()  # adds into .grad; this micro-batch's graph is freed
        total += loss.item()
    return total
    # END EXERCISE accumulate_gradients

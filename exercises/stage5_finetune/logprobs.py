"""Stage 5 exercise: the log-probability of a reply, summed over its tokens (exercise sequence_logprobs).

DPO compares how likely the policy and the reference make a whole reply y to a prompt x:

    log pi(y | x) = sum over the reply's tokens y_k of log pi(y_k | x, y_1 .. y_k-1)

A row of ``input_ids`` holds the prompt, then the reply, then padding. The model's
``logits[:, t]`` are its prediction for the **next** token, ``input_ids[:, t + 1]``: the
first token has no prediction, and the last logits predict a token that is not in the row.
So token t (t >= 1) is scored by ``log_softmax(logits[:, t - 1])[input_ids[:, t]]``.

Only the reply counts: ``response_mask[:, t]`` is True when token t belongs to the reply
(its ``<|im_end|>`` included) and False on the prompt and the padding. The prompt is the
same for both replies of a pair and the padding means nothing: counting either would add
noise (or a constant) to the comparison.

The course's own version (``llm_course/training/dpo.py``) takes the labels already shifted
(``labels[:, t] = input_ids[:, t + 1]``, -100 where not counted), the trainer's convention.
Check your work with ``.venv/bin/llm-course grade 5``.
"""

from __future__ import annotations

import torch


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of each row's reply tokens.

    Args:
        logits: (B, T, V), the model's output for ``input_ids`` (any float dtype).
        input_ids: (B, T) int64, prompt + reply + padding.
        response_mask: (B, T) bool, True where the token of ``input_ids`` is part of the reply.
    Returns:
        (B,) float32: for each row, the sum over t >= 1 with ``response_mask[:, t]`` of
        ``log softmax(logits[:, t - 1])[input_ids[:, t]]`` (a sum, not a mean: a reply's
        probability is the product of its tokens' probabilities).

    Hint: ``logits[:, :-1]`` predict ``input_ids[:, 1:]``; ``torch.log_softmax(x.float(), dim=-1)``,
    then ``.gather(-1, targets.unsqueeze(-1)).squeeze(-1)``; multiply by the mask of the
    predicted tokens, ``response_mask[:, 1:]``, and sum over the time axis.
    """
    # Your code here (exercise sequence_logprobs)
    raise NotImplementedError("sequence_logprobs: shift by one, log_softmax over the vocabulary, gather, mask, sum")

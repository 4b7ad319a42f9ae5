"""Preference accuracy: on held-out pairs, does DPO's implicit reward prefer the chosen reply?

DPO never trains a reward model, but it defines one. For a policy :math:`\\pi` trained
from a reference :math:`\\pi_{ref}`, the *implicit reward* of a reply y to a prompt x is

.. math::  r(x, y) = \\beta \\, (\\log \\pi(y \\mid x) - \\log \\pi_{ref}(y \\mid x))

where :math:`\\log \\pi(y \\mid x)` is the sum of the log-probabilities of the reply's tokens
(its ``<|im_end|>`` included), given the prompt: the prompt's own tokens do not count.
The preference accuracy is the share of pairs with :math:`r(x, y_{chosen}) > r(x, y_{rejected})`
(a tie counts as wrong, as in TRL: before any training, policy = reference, every reward
is 0 and the accuracy is 0). ``beta`` scales both rewards alike, so it changes the margin,
not the accuracy.

On pairs the training never saw, this says whether DPO learned *which* answer is right
or only memorized its training pairs.
"""

from __future__ import annotations

import torch

from llm_course.evaluation.accuracy import EOS, IM_END, _model_device, render_prompt
from llm_course.training.dpo import IGNORE_INDEX, sequence_logprobs


@torch.no_grad()
def response_logprobs(model, pairs: list[tuple[list[int], list[int]]], *, pad_id: int = 0,
                      batch_size: int = 16, device=None) -> torch.Tensor:  # fmt: skip
    """(N,) float32: for each (prompt ids, response ids), the summed log-probability of the response given the prompt.

    Each row is prompt + response, padded on the right (causal attention: real tokens never
    see the padding). Token t is predicted by the logits of position t - 1, so the response's
    tokens, at positions P .. P + R - 1, are the labels of positions P - 1 .. P + R - 2; every
    other label is -100, and DPO's own :func:`~llm_course.training.dpo.sequence_logprobs` sums.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    block_size = getattr(model.config, "block_size", None)
    out = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            rows = [list(p) + list(r) for p, r in chunk]
            if any(len(p) == 0 or len(r) == 0 for p, r in chunk):
                raise ValueError("response_logprobs: every prompt and every response needs at least one token")
            T = max(len(row) for row in rows)
            if block_size is not None and T > block_size:
                raise ValueError(f"response_logprobs: a prompt + response of {T} tokens is longer than block_size={block_size}")
            ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
            labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)  # labels[b, t]: the token after t
            for b, ((p, r), row) in enumerate(zip(chunk, rows)):
                ids[b, : len(row)] = torch.tensor(row)
                labels[b, len(p) - 1 : len(row) - 1] = torch.tensor(list(r))  # only the response's tokens count
            logits = model(ids.to(device))  # (B, T, V)
            out.append(sequence_logprobs(logits, labels.to(device)).cpu())  # (B,)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def _encode_pairs(tokenizer, pairs: list[dict]) -> tuple[list, list]:
    chosen, rejected = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not {"prompt", "chosen", "rejected"} <= pair.keys():
            raise ValueError(f"preference_accuracy: pair {i} needs 'prompt', 'chosen' and 'rejected', got {pair!r}")
        prompt = render_prompt(tokenizer, pair["prompt"])
        chosen.append((prompt, tokenizer.encode(pair["chosen"] + IM_END)))  # the reply, then the end of the turn
        rejected.append((prompt, tokenizer.encode(pair["rejected"] + IM_END)))
    return chosen, rejected


def preference_accuracy(
    model, ref_model, pairs: list[dict], beta: float = 0.1, *, tokenizer=None, batch_size: int = 16, device=None
) -> dict:
    """The share of ``pairs`` whose implicit DPO reward prefers ``chosen`` (module docstring).

    Args:
        model: the policy (after DPO).
        ref_model: the reference (the model DPO started from); None: no reference (log-probs of 0).
        pairs: ``{"prompt": str | messages, "chosen": str, "rejected": str}`` dicts.
        beta: DPO's beta (scales the rewards and the margin).
        tokenizer: default: the course tokenizer.
    Returns:
        ``{"accuracy", "margin" (mean r_chosen - r_rejected), "chosen_reward", "rejected_reward"
        (means), "total"}``.
    """
    if tokenizer is None:
        from llm_course.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    if not pairs:
        raise ValueError("preference_accuracy: no pairs to score")
    pad = tokenizer.token_to_id(EOS) or 0
    chosen, rejected = _encode_pairs(tokenizer, pairs)

    def logps(m, seqs):
        if m is None:
            return torch.zeros(len(seqs))
        return response_logprobs(m, seqs, pad_id=pad, batch_size=batch_size, device=device)

    r_chosen = beta * (logps(model, chosen) - logps(ref_model, chosen))  # (N,)
    r_rejected = beta * (logps(model, rejected) - logps(ref_model, rejected))  # (N,)
    return {
        "accuracy": (r_chosen > r_rejected).float().mean().item(),
        "margin": (r_chosen - r_rejected).mean().item(),
        "chosen_reward": r_chosen.mean().item(),
        "rejected_reward": r_rejected.mean().item(),
        "total": len(pairs),
    }

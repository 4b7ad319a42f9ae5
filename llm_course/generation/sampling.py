"""From logits to the next token: repetition penalty, temperature, top-k, top-p, then a choice.

A language model gives, at each step, one score (a *logit*) per token of the vocabulary:
``logits`` (B, V). Generation turns them into one token id per row, in a fixed order
(the order Hugging Face ``transformers`` applies them, so both give the same tokens)::

    logits (B, V) --repetition penalty--> --temperature--> --top-k--> --top-p--> softmax --> sample (B,)
                                                                                  (or argmax when greedy)

* **repetition penalty** ``p``: for each token already in the row, its logit is divided
  by ``p`` when positive and multiplied by ``p`` when negative; either way (``p > 1``) it
  becomes less likely. Applied once per token, however often it occurred.
* **temperature** ``t``: ``logits / t``. ``t < 1`` sharpens the distribution (towards
  greedy), ``t > 1`` flattens it.
* **top-k**: keep the ``k`` largest logits, set every other to ``-inf`` (a probability of
  0 after the softmax). Ties with the k-th value are kept too.
* **top-p** (nucleus): keep the smallest set of most likely tokens whose probabilities add
  up to at least ``p``. Sorting ascending, a token is removed when the cumulative
  probability *up to and including it* is ``<= 1 - p``: everything else is the nucleus.
  At least ``min_tokens_to_keep`` tokens (the most likely) always stay.

Each function takes and returns a (B, V) tensor and changes nothing in place, so they can
be tested one by one (``tests/test_generation.py`` checks them against ``transformers``'
``RepetitionPenaltyLogitsProcessor``, ``TemperatureLogitsWarper``, ``TopKLogitsWarper``
and ``TopPLogitsWarper``). None of them reads a value back to the host: a step built from
them can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch


def _check_logits(fn: str, logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        what = f"a {logits.dim()}-d {logits.dtype} tensor" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{fn}: logits must be a floating-point (B, V) tensor, got {what}")


def apply_repetition_penalty(
    logits: torch.Tensor,
    generated_ids: torch.Tensor,
    penalty: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Make tokens that already occur in each row less likely (``penalty > 1``) or more (``< 1``).

    Args:
        logits: (B, V) float, the scores of the next token.
        generated_ids: (B, S) long, the tokens of each row so far (prompt included, as in
            ``transformers``).
        penalty: > 0; 1.0 changes nothing.
        mask: optional (B, S) bool, False for positions to ignore (left padding). Without it
            every position counts, as in ``transformers``, which also penalizes the pad token
            of a left-padded row.
    Returns:
        (B, V): ``logit / penalty`` where the logit is positive and ``logit * penalty`` where
        it is negative, for every token present in the row; the other logits unchanged.
    """
    _check_logits("apply_repetition_penalty", logits)
    if not penalty > 0:
        raise ValueError(f"apply_repetition_penalty: penalty must be > 0 (1.0 is no penalty), got {penalty}")
    if generated_ids.dim() != 2 or generated_ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f"apply_repetition_penalty: generated_ids must be (B, S) with B = {logits.shape[0]} rows like the logits, "
            f"got shape {tuple(generated_ids.shape)}"
        )
    B, V = logits.shape
    if penalty == 1.0:
        return logits
    # (B, V + 1) marks of the tokens present; ids outside the vocabulary (and masked positions) go to the extra column
    ids = generated_ids.long().clamp(0, V)
    if mask is not None:
        ids = ids.masked_fill(~mask.bool(), V)
    seen = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, ids, True)
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, :V], penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` (B, V); ``temperature`` must be > 0 (greedy decoding is ``do_sample=False``)."""
    _check_logits("apply_temperature", logits)
    if not temperature > 0:
        raise ValueError(
            f"apply_temperature: temperature must be > 0, got {temperature}; "
            "for greedy decoding (always the most likely token) use do_sample=False"
        )
    return logits if temperature == 1.0 else logits / temperature


def top_k_top_p_filter(
    logits: torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    min_tokens_to_keep: int = 1,
    filter_value: float = float("-inf"),
) -> torch.Tensor:
    """Set to ``filter_value`` (-inf) every logit outside the top-k, then outside the nucleus of mass ``top_p``.

    Args:
        logits: (B, V) float.
        top_k: keep the ``top_k`` largest logits of each row (and any equal to the k-th);
            None or 0: no top-k.
        top_p: in [0, 1]; keep the smallest set of most likely tokens whose probabilities
            (softmax of the logits, after top-k) sum to at least ``top_p``; None or 1.0: no top-p.
        min_tokens_to_keep: never keep fewer tokens than this (the most likely ones).
    Returns:
        (B, V), the same dtype; removed tokens hold ``filter_value``.
    """
    _check_logits("top_k_top_p_filter", logits)
    if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"top_k_top_p_filter: min_tokens_to_keep must be an int >= 1, got {min_tokens_to_keep!r}")
    if top_k is not None and top_k != 0:
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k_top_p_filter: top_k must be a positive int (or None / 0 for no top-k), got {top_k!r}")
        k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
        kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, filter_value)
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_k_top_p_filter: top_p must be in [0, 1] (1.0 or None: no top-p), got {top_p!r}")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # (B, V) least likely first
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V), ends at 1
        remove_sorted = cumulative <= (1.0 - top_p)  # the tail whose total mass is at most 1 - p
        remove_sorted[:, -min_tokens_to_keep:] = False  # the most likely always stay
        remove = remove_sorted.scatter(1, order, remove_sorted)  # back to vocabulary order
        logits = logits.masked_fill(remove, filter_value)
    return logits


def sample_next(
    logits: torch.Tensor,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_tokens_to_keep: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose one token per row: the argmax (``do_sample=False``) or a sample from the filtered softmax.

    Args:
        logits: (B, V) float (a repetition penalty, if any, already applied).
        do_sample: False: greedy, the most likely token (the first one on a tie), and the
            other arguments are ignored. True: temperature, top-k, top-p, then a draw.
        generator: a ``torch.Generator`` on the logits' device, for reproducible draws.
    Returns:
        (B,) long token ids.
    """
    _check_logits("sample_next", logits)
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    logits = top_k_top_p_filter(logits, top_k, top_p, min_tokens_to_keep)
    probs = torch.softmax(logits, dim=-1)  # (B, V), 0 where filtered
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)

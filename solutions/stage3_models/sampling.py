"""Stage 3 exercise: temperature, top-k and top-p sampling (exercise top_k_top_p).

A language model gives, for the next token, one logit per word of the
vocabulary. Greedy decoding takes the largest; sampling draws a token from the
distribution ``softmax(logits)``. Three knobs reshape that distribution first,
applied in this order (Hugging Face's ``generate`` does the same):

1. **temperature** T > 0: ``logits / T``. T < 1 sharpens the distribution
   (towards greedy), T > 1 flattens it. It must act on the *logits*: dividing
   probabilities by T and renormalizing would change nothing.
2. **top-k**: keep the k largest logits, set the others to ``-inf`` (probability
   0). The long tail of unlikely tokens, which together can hold a lot of mass,
   can no longer be drawn.
3. **top-p** (nucleus sampling): sort the remaining tokens by probability, and
   keep the smallest set of most likely ones whose probabilities add up to at
   least p. The token that crosses p is kept; in other words, a token is kept
   when the mass of the tokens ranked *before* it is still < p. The most likely
   token is always kept, so top_p = 0 is greedy. Its probabilities are those
   after temperature and top-k.

Then the softmax of the filtered logits gives the distribution to draw from
(``torch.multinomial(probs, 1)``): the kept tokens' probabilities, renormalized
to add up to 1.

The course's version, used by ``llm_course.generation.generate``, is
``llm_course/generation/sampling.py`` (look there only once you are done).
Check your work with ``.venv/bin/llm-course grade 3``.
"""

from __future__ import annotations

import torch


def top_k_top_p(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution to sample the next token from, after temperature, top-k and top-p.

    Args:
        logits: (B, V) one row of logits per sequence; float32, float16 or bfloat16.
        temperature: > 0; the logits are divided by it first.
        top_k: keep the top_k largest logits of each row (None or 0: no limit;
            top_k >= V keeps everything).
        top_p: in [0, 1]; then keep, in each row, the most likely tokens up to and
            including the one where the cumulative probability reaches top_p
            (None or 1.0: no limit). At least one token is always kept.

    Returns:
        (B, V) float32 probabilities: 0 for every removed token, the kept ones
        renormalized so that each row sums to 1.

    Hint: compute in float32 (``logits.float()``). For top-k, the k-th largest
    logit of each row is ``torch.topk(logits, k, dim=-1).values[..., -1:]`` (B, 1);
    ``masked_fill`` what is below it with ``-inf``. For top-p, sort each row in
    descending order (``torch.sort`` also gives the indices), take the softmax and
    ``cumsum`` of the sorted logits; the mass *before* a token is its cumsum minus
    its own probability. Mark the sorted positions to remove, put the marks back
    in vocabulary order with ``marks.scatter(-1, sorted_indices, marks)``, and fill
    those logits with ``-inf``. The tests use logits without ties.
    """
    # BEGIN EXERCISE top_k_top_p
    # stub raises: "top_k_top_p: logits / temperature; keep the top_k largest; keep tokens whose mass before them is < top_p; softmax"
    logits = logits.float() / temperature  # (B, V)
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1): the smallest logit kept
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # (B, V): the mass of the tokens ranked before each one
        remove = before >= top_p
        remove[..., 0] = False  # the most likely token is always kept
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))  # back to vocabulary order
    return logits.softmax(dim=-1)  # (B, V): 0 where -inf, the rest renormalized
    # END EXERCISE top_k_top_p

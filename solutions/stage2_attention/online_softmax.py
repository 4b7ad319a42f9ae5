"""Stage 2 exercise: the online softmax (exercise online_softmax).

FlashAttention never holds a whole row of scores: it sees them block by block.
Can a softmax be computed that way, in one pass? Yes, by keeping two running
numbers per row while visiting the blocks:

* ``m``: the largest score seen so far (starts at -inf),
* ``l``: the sum of ``exp(score - m)`` over the scores seen so far (starts at 0).

When a new block arrives, the max may grow from m to m_new. The sum so far was
computed relative to the old max, so it is *rescaled*:
``exp(s - m) = exp(s - m_new) * exp(m_new - m)``, hence::

    m_new = max(m, max(block))
    l_new = l * exp(m - m_new) + sum(exp(block - m_new))

After the last block, ``softmax(x)_j = exp(x_j - m) / l`` and the log-sum-exp,
``log(sum_j exp(x_j))``, is ``m + log(l)``: the number FlashAttention keeps
for its backward pass.

Write ``online_softmax_step`` (the update above) and ``online_softmax`` (which
visits x block by block, calling ``online_softmax_step`` for each block).
Notebook ``02a_attention_and_rope`` derives it; the course's version is
``llm_course.backends.torch_ops.attention.online_softmax``.
"""

from __future__ import annotations

import torch


def online_softmax_step(
    m: torch.Tensor, l: torch.Tensor, x_block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one block of scores into the running max and the running sum.

    Args:
        m: (...) running max of each row so far (-inf before the first block).
        l: (...) running ``sum(exp(x - m))`` of each row so far (0 before the first block).
        x_block: (..., b) the next b scores of each row (finite).

    Returns:
        (m_new, l_new), each (...): ``m_new = max(m, max(x_block))`` and
        ``l_new = l * exp(m - m_new) + sum(exp(x_block - m_new))``.

    Hint: ``x_block.amax(dim=-1)`` and ``torch.maximum``. Never exponentiate a
    score without subtracting the max first: ``exp(1e4)`` is inf.
    """
    # BEGIN EXERCISE online_softmax
    # stub raises: "online_softmax_step: m_new = max(m, max(block)); l_new = l * exp(m - m_new) + sum(exp(block - m_new))"
    m_new = torch.maximum(m, x_block.amax(dim=-1))  # (...)
    l_new = l * torch.exp(m - m_new) + torch.exp(x_block - m_new[..., None]).sum(dim=-1)
    return m_new, l_new
    # END EXERCISE online_softmax


def online_softmax(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dimension, one pass of blocks for the statistics.

    Args:
        x: (..., N) scores (float32 or float64).
        block: how many scores a block holds; the last block may be shorter.

    Returns:
        (probs, lse): probs (..., N) = softmax(x) over the last dim; lse (...) =
        log(sum(exp(x))) over the last dim. Same dtype as x.

    Do it the online way: start from ``m = -inf`` and ``l = 0`` (shape ``x.shape[:-1]``),
    visit ``x[..., j : j + block]`` for ``j = 0, block, 2 * block, ...`` in order and
    call ``online_softmax_step`` on each. Then ``probs = exp(x - m) / l`` and
    ``lse = m + log(l)`` (use ``m[..., None]`` to broadcast over the last dim).
    """
    # BEGIN EXERCISE online_softmax
    # stub raises: "online_softmax: visit the blocks with online_softmax_step, then probs = exp(x - m) / l and lse = m + log(l)"
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)  # (...)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)  # (...)
    for j in range(0, x.shape[-1], block):
        m, l = online_softmax_step(m, l, x[..., j : j + block])
    probs = torch.exp(x - m[..., None]) / l[..., None]  # (..., N)
    return probs, m + torch.log(l)
    # END EXERCISE online_softmax

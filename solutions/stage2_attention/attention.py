"""Stage 2 exercises: attention from its definition, then grouped-query heads.

Attention lets every query look at the keys, and mixes the values by how well
they match::

    out = softmax(q @ k^T / sqrt(D) + mask) @ v

* ``causal_attention`` (exercise causal_attention): one key/value head per query
  head, T queries and T keys, causal: query i sees keys 0 .. i (itself included).
* ``gqa_attention`` (exercise gqa_head_sharing): fewer key/value heads than query
  heads (grouped-query attention), and possibly more keys than queries (a KV cache).

Write them with plain PyTorch (``@``, ``torch.softmax``, ``masked_fill``, ...);
no need for ``torch.nn.functional.scaled_dot_product_attention``, which would
do all the work. Notebook ``02a_attention_and_rope`` walks through it; the
course's version is ``llm_course/backends/torch_ops/attention.py`` (look there
only once you are done). Check your work with ``llm-course grade 2``.
"""

from __future__ import annotations

import math

import torch


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal scaled dot-product attention.

    Args:
        q, k, v: (B, H, T, D) float tensors (float32 or float64): batch, heads,
            tokens, head size.

    Returns:
        (B, H, T, D), same dtype: ``out[b, h, i] = sum_j p[i, j] * v[b, h, j]`` where
        ``p[i, :] = softmax_j(q[b, h, i] . k[b, h, j] / sqrt(D))`` over the keys
        ``j <= i`` only (a query sees itself and the past, never the future).

    Hint: scores ``q @ k.transpose(-2, -1)`` are (B, H, T, T), row i for query i,
    column j for key j. Build a (T, T) boolean mask of the future (``torch.triu``
    with ``diagonal=1``), fill those scores with ``-inf`` (``masked_fill``), and
    take the softmax over the *last* dimension (the keys): ``exp(-inf) = 0``, so
    masked keys get no weight. ``torch.softmax`` subtracts the row max for you,
    which keeps large scores from overflowing.
    """
    # BEGIN EXERCISE causal_attention
    # stub raises: "causal_attention: scores q @ k^T / sqrt(D), mask the future with -inf, softmax over the keys, times v"
    T, D = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=1)  # (T, T): j > i
    scores = scores.masked_fill(future, float("-inf"))
    p = torch.softmax(scores, dim=-1)  # over the keys
    return p @ v  # (B, H, T, D)
    # END EXERCISE causal_attention


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Grouped-query attention: several query heads share one key/value head.

    Args:
        q: (B, Hq, T, D) queries.
        k, v: (B, Hkv, S, D) keys and values, with Hkv dividing Hq and S >= T.
        causal: mask the future or not.

    Returns:
        (B, Hq, T, D), q's dtype.

    Rules:
        * Heads: with ``G = Hq // Hkv``, query head ``h`` reads key/value head ``h // G``
          (query heads 0 .. G-1 share kv head 0, the next G share kv head 1, ...).
        * Causal with a cache: the T queries are the *last* T of the S positions, so
          query ``i`` sits at position ``i + S - T`` and sees keys ``j <= i + S - T``.
          (With T == S this is the usual ``j <= i``.)
        * Scale by ``1 / sqrt(D)``; softmax over the keys.

    Hint: view q as (B, Hkv, G, T, D) and k, v as (B, Hkv, 1, S, D): the product
    broadcasts each kv head over its G query heads without copying it (or use
    ``k.repeat_interleave(G, dim=1)``, which copies). For the mask, compare
    ``torch.arange(S)`` (keys) with ``torch.arange(T) + S - T`` (queries).
    """
    # BEGIN EXERCISE gqa_head_sharing
    # stub raises: "gqa_attention: query head h reads kv head h // (Hq // Hkv); causal: query i sees keys j <= i + S - T"
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    qg = q.reshape(B, Hkv, G, T, D)  # (B, Hkv, G, T, D): the G query heads of each kv head
    scores = qg @ k.unsqueeze(2).transpose(-2, -1) / math.sqrt(D)  # (B, Hkv, G, T, S)
    if causal:
        query_pos = torch.arange(T, device=q.device)[:, None] + (S - T)  # (T, 1)
        key_pos = torch.arange(S, device=q.device)[None, :]  # (1, S)
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    p = torch.softmax(scores, dim=-1)  # (B, Hkv, G, T, S)
    out = p @ v.unsqueeze(2)  # (B, Hkv, G, T, D)
    return out.reshape(B, Hq, T, D)
    # END EXERCISE gqa_head_sharing

"""Decode attention: one new query per sequence against a preallocated KV cache. The PyTorch reference.

While a model generates text, each step adds one token per sequence. Its query
attends to every key cached so far, and the cache is a buffer allocated once, at
its largest size ``S_max``, and filled slot by slot (``llm_course.models.kv_cache``):

* q:             (B, Hq, 1, D)        -- one query per head
* k_cache:       (B, Hkv, S_max, D)   -- slots 0 .. cache_seqlens[b] - 1 are written
* v_cache:       (B, Hkv, S_max, D)
* cache_seqlens: (B,) int32 or int64  -- how many slots of each row are filled
* out:           (B, Hq, 1, D), in q's dtype

Query head ``h`` reads kv head ``h // G`` with ``G = Hq // Hkv`` (grouped-query
attention), as in ``ops.attention``.

Which slots the query of row ``b`` sees (all rules combine with AND), with
``L = cache_seqlens[b]``:

* ``j < L``: the written slots (the query is the token at position L - 1, already
  written into the cache, so it sees itself);
* ``window=w``: ``j >= L - w``, the last ``w`` of them (sliding-window attention);
* ``key_padding_mask[b, j]`` (B, S_max) bool: True where slot j holds a real token,
  False where it holds left padding.

So for a cache whose rows are all filled to L, the result is the last row of
``ops.attention(q_all, k[:, :, :L], v[:, :, :L], causal=True)``.

Slots a query does not see never change its output, even when they hold NaN or
inf (a fresh ``torch.empty`` buffer may). A row that sees no slot at all (L = 0,
or everything padding) gets 0. Everything here is tensor arithmetic on the
device: no ``.item()``, no Python branch on the values of ``cache_seqlens``, so a
decode step built on it can be captured in a CUDA graph and replayed while the
lengths advance on the device.
"""

from __future__ import annotations

import math

import torch


def visible_slots(
    cache_seqlens: torch.Tensor,
    S_max: int,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, S_max) bool: True where row b's query sees slot j."""
    j = torch.arange(S_max, device=cache_seqlens.device)[None, :]  # (1, S_max): each slot's position
    L = cache_seqlens.to(torch.int64)[:, None]  # (B, 1): the filled length of each row
    seen = j < L  # (B, S_max): the written slots
    if window is not None:
        seen = seen & (j >= L - window)  # only the last `window` of them
    if key_padding_mask is not None:
        seen = seen & key_padding_mask  # and no padding
    return seen


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per head against the filled slots of a KV cache. q (B, Hq, 1, D) -> (B, Hq, 1, D).

    k_cache, v_cache (B, Hkv, S_max, D); cache_seqlens (B,). ``scale`` defaults to
    ``1 / sqrt(D)``. Differentiable (in q, k_cache and v_cache).
    """
    B, Hq, _, D = q.shape
    Hkv, S_max = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv  # query heads per kv head
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # scores and softmax in fp32 at least

    seen = visible_slots(cache_seqlens, S_max, window, key_padding_mask)  # (B, S_max)
    seen_kv = seen[:, None, :, None]  # (B, 1, S_max, 1): broadcast over heads and features

    # Unseen slots may hold anything (NaN, inf): replace them by 0 *before* any product,
    # since a probability of 0 times NaN would still be NaN.
    k = torch.where(seen_kv, k_cache, 0).to(acc)  # (B, Hkv, S_max, D)
    v = torch.where(seen_kv, v_cache, 0).to(acc)  # (B, Hkv, S_max, D)
    qg = q.to(acc).reshape(B, Hkv, G, D)  # (B, Hkv, G, D): the G query heads that share a kv head

    scores = (qg @ k.transpose(-1, -2)) * scale  # (B, Hkv, G, S_max)
    scores = scores.masked_fill(~seen[:, None, None, :], float("-inf"))

    # A softmax that gives 0 to a row with no visible slot: subtract the row max (0 when
    # it is -inf), exponentiate (unseen slots give exp(-inf) = 0), divide by the sum or by 1.
    if S_max > 0:
        m = scores.amax(dim=-1, keepdim=True).detach()  # (B, Hkv, G, 1); the softmax does not depend on it
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    else:  # an empty cache (amax of nothing is an error): every row gets 0
        m = scores.new_zeros(B, Hkv, G, 1)
    p = torch.exp(scores - m)  # (B, Hkv, G, S_max)
    l = p.sum(dim=-1, keepdim=True)  # (B, Hkv, G, 1)
    p = p / torch.where(l > 0, l, torch.ones_like(l))

    out = p @ v  # (B, Hkv, G, D)
    return out.reshape(B, Hq, 1, D).to(q.dtype)

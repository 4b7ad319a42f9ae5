"""Attention over a static KV cache (``llm_course.models.kv_cache``): the one function both attention layers call.

Two cases, by the number T of new tokens:

* **T > 1** (a prompt, or a chunk of one): write the new keys and values into the cache,
  then ``ops.attention`` over the filled slots. The new queries are the *last* T of the
  S keys, which is how ``ops.attention``'s causal mask aligns them (query i sees keys
  ``j <= i + S - T``).
* **T == 1** (a decode step): write the one new key and value, then
  ``ops.decode_attention`` over the whole preallocated buffer, told by the device tensor
  ``cache_seqlens`` which slots are filled. No Python int depends on the length, so this
  step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from llm_course import ops


def cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache, *, window: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """Attend q (B, Hq, T, D) over the cache after appending k, v (B, Hkv, T, D) -> (B, Hq, T, D).

    ``cache`` is one layer's :class:`~llm_course.models.kv_cache.LayerKVCache`;
    ``window`` the layer's sliding window, which must be the one the cache was made with.
    """
    if cache.window != window:
        raise ValueError(f"attention with a KV cache: the layer's sliding window is {window} but its cache was made "
                         f"for {cache.window}; make the cache with the model's new_kv_cache()")  # fmt: skip
    if q.shape[2] == 1:
        cache.write(k, v)  # at slot cache_seqlens - 1, an index on the device
        return ops.decode_attention(
            q, cache.k, cache.v, cache.seqlens,
            scale=scale, window=cache.decode_window, key_padding_mask=cache.key_padding_mask,
        )  # (B, Hq, 1, D)  # fmt: skip
    k_all, v_all, mask = cache.update(k, v)  # (B, Hkv, S, D) each, the T new keys last
    return ops.attention(q, k_all, v_all, causal=True, scale=scale, window=window, key_padding_mask=mask)


def check_static_cache(component: str, causal: bool, key_padding_mask, past_key_value, use_cache: bool) -> None:
    """A layer given a static cache takes its padding from it and returns no tuple cache."""
    if not causal:
        raise ValueError(f"{component}: a KV cache needs causal attention (each token sees only earlier ones)")
    if past_key_value is not None or use_cache:
        raise ValueError(f"{component}: pass either kv_cache (a static cache) or past_key_value/use_cache "
                         "(a growing tuple), not both")  # fmt: skip
    if key_padding_mask is not None:
        raise ValueError(f"{component}: with a kv_cache the padding comes from the cache (cache.begin(T, "
                         "attention_mask)); pass key_padding_mask=None")  # fmt: skip

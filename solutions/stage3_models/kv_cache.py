"""Stage 3 exercise: one decode step of RoPE attention with a KV cache (exercise decode_with_cache).

Generating text adds one token at a time. Without a cache, every step would
recompute the keys and values of the whole prefix; with one, each token's key
and value are computed once, stored, and read back by every later step. The
course's cache (``llm_course/models/kv_cache.py``) is *preallocated*: per layer,
two buffers of shape (B, Hkv, S_max, D), filled slot by slot, written in place
(so their memory never moves -- which is what lets a decode step be captured
in a CUDA graph later).

One decode step of Qwen2's attention (``GroupedQueryAttention``) for the token at
position ``pos``, whose predecessors fill slots 0 .. pos - 1::

    x (B, 1, C) --q_proj--> q (B, Hq, 1, D)  --RoPE at pos--> q
                --k_proj--> k (B, Hkv, 1, D) --RoPE at pos--> k --> k_cache[:, :, pos]
                --v_proj--> v (B, Hkv, 1, D) ---------------------> v_cache[:, :, pos]
    q attends to slots 0 .. pos of the cache --> (B, Hq, 1, D) --merge heads, o_proj--> (B, 1, C)

Two rules make it right:

* **Keys are stored rotated.** Each key is rotated once, at its own position,
  before it goes into the cache; a later step reads it as it is. Only the new
  token's q and k are rotated in a step, both at ``pos``.
* **Only written slots count.** Slots pos + 1 .. S_max - 1 hold whatever was
  there (zeros, old tokens, NaN): attention must read slots 0 .. pos only.

Done right, the outputs of the steps are exactly the rows of one causal
forward over the whole sequence. The course's version is in
``llm_course/models/kv_cache.py`` and
``llm_course/models/components/attention/cached.py`` (look there only once you
are done). Check your work with ``.venv/bin/llm-course grade 3``.
"""

from __future__ import annotations

import torch

from llm_course import ops
from llm_course.models.components import GroupedQueryAttention


def decode_with_cache(
    attn: GroupedQueryAttention,
    x: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
) -> torch.Tensor:
    """Attention output of the token at position ``pos``, writing its key and value into the cache.

    Args:
        attn: the layer, a ``GroupedQueryAttention``. Use its projections
            ``attn.q_proj``, ``attn.k_proj``, ``attn.v_proj``, ``attn.o_proj``, its sizes
            ``attn.num_attention_heads`` (Hq), ``attn.num_key_value_heads`` (Hkv),
            ``attn.head_dim`` (D), and its rotary tables ``attn.rotary_emb`` (the tests
            use no sliding window and the usual rotate-half RoPE).
        x: (B, 1, C) the new token's hidden state (the same position for the whole batch).
        k_cache, v_cache: (B, Hkv, S_max, D): slots 0 .. pos - 1 hold the earlier
            tokens' keys (already rotated) and values; the other slots hold anything.
        pos: int, the new token's position, 0 <= pos < S_max.

    Returns:
        (B, 1, C) in x's dtype: what ``attn`` gives this token in a causal forward
        over the whole sequence. And, in place: ``k_cache[:, :, pos]`` holds the new
        key rotated at ``pos``, ``v_cache[:, :, pos]`` the new value; no other slot changes.

    Hint: split the projections into heads as ``attn.forward`` does
    (``.view(B, 1, H, D).transpose(1, 2)``). ``cos, sin = attn.rotary_emb(torch.tensor([pos],
    device=x.device))`` are (1, D) tables for ``ops.apply_rope(q, cos, sin)``. Write with
    ``k_cache[:, :, pos : pos + 1] = k``, then ``ops.attention(q, k_cache[:, :, : pos + 1],
    v_cache[:, :, : pos + 1])`` (it pairs each kv head with its group of query heads;
    one query against pos + 1 keys, causal or not, sees them all).
    """
    # BEGIN EXERCISE decode_with_cache
    # stub raises: "decode_with_cache: q, k, v of x; RoPE at pos on q and k; write k, v at slot pos; attend to slots 0..pos; o_proj"
    B, _, C = x.shape
    Hq, Hkv, D = attn.num_attention_heads, attn.num_key_value_heads, attn.head_dim
    q = attn.q_proj(x).view(B, 1, Hq, D).transpose(1, 2)  # (B, Hq, 1, D)
    k = attn.k_proj(x).view(B, 1, Hkv, D).transpose(1, 2)  # (B, Hkv, 1, D)
    v = attn.v_proj(x).view(B, 1, Hkv, D).transpose(1, 2)  # (B, Hkv, 1, D)
    cos, sin = attn.rotary_emb(torch.tensor([pos], device=x.device))  # (1, D) each: the angles of position pos
    q = ops.apply_rope(q, cos, sin)
    k = ops.apply_rope(k, cos, sin)  # rotated once, here, before it is stored
    k_cache[:, :, pos : pos + 1] = k  # in place: slot pos
    v_cache[:, :, pos : pos + 1] = v
    y = ops.attention(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1], causal=False)  # (B, Hq, 1, D): slots 0..pos
    y = y.transpose(1, 2).reshape(B, 1, Hq * D)  # (B, 1, Hq * D)
    return attn.o_proj(y)  # (B, 1, C)
    # END EXERCISE decode_with_cache

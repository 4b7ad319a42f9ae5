"""Grouped-query attention with rotary positions, the Qwen2 / Llama way.

Fewer key/value heads than query heads: ``num_kv_heads`` divides ``num_heads``
and each group of ``G = num_heads / num_kv_heads`` query heads shares one key
and one value head. Multi-head attention is G = 1; multi-query attention is
``num_kv_heads = 1``. The KV cache, which holds K and V for every past token
(the memory that limits long generations), shrinks by G.

    x (B, T, C) --q_proj--> (B, Hq, T, D) --RoPE--\
                --k_proj--> (B, Hkv, T, D) --RoPE--+-- [append to cache] --attention--> (B, Hq, T, D)
                --v_proj--> (B, Hkv, T, D) --------/
      --merge heads--> (B, T, Hq * D) --o_proj--> (B, T, C)

Names and biases follow Hugging Face's Qwen2 (``self_attn.q_proj``, ...): q, k and
v projections with a bias (``qkv_bias=True``; Llama has none), ``o_proj``
without. ``ops.attention`` broadcasts each kv head over its group; nothing is
repeated here.

Positions are explicit: ``position_ids`` (B, T) give each token's position, which
is how padding on the left and a KV cache (new tokens at positions S_past ..)
are handled. Keys go into the cache already rotated.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.embeddings.rotary import RotaryEmbedding
from llm_course.models.components.linear import Linear

KVCache = tuple[torch.Tensor, torch.Tensor]  # (k, v), each (B, Hkv, S, D)


class GroupedQueryAttention(nn.Module):
    """GQA self-attention with RoPE: ``forward(x, position_ids) -> (B, T, C)``.

    Arguments: ``hidden_size`` C; ``num_heads`` Hq; ``num_kv_heads`` Hkv dividing Hq;
    ``head_dim`` D (default C / Hq); ``max_position``, ``rope_base``, ``rope_scaling``
    for the rotary tables (or ``rotary``, a :class:`RotaryEmbedding` shared by all
    layers of a model, to keep one copy of its tables); ``qkv_bias``;
    ``sliding_window`` (None: full causal attention); ``attention_dropout``.

    ``forward(x, position_ids=None, key_padding_mask=None, past_key_value=None,
    use_cache=False, position_embeddings=None)``:

    * ``position_ids`` (B, T) or (T,) int; default S_past .. S_past + T - 1.
    * ``key_padding_mask`` (B, S) bool, True for real tokens, S = S_past + T.
    * ``past_key_value``: (k, v) of earlier tokens, each (B, Hkv, S_past, D).
    * ``use_cache=True`` returns ``(out, (k, v))`` with all S keys and values.
    * ``position_embeddings``: (cos, sin) already computed for ``position_ids``
      (a model computes them once for all its layers).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        *,
        head_dim: int | None = None,
        max_position: int = 2048,
        rope_base: float = 10000.0,
        rope_scaling: dict | None = None,
        rotary: RotaryEmbedding | None = None,
        qkv_bias: bool = True,
        sliding_window: int | None = None,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"GroupedQueryAttention: num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.sliding_window, self.attention_dropout = sliding_window, attention_dropout
        D = self.head_dim
        self.q_proj = Linear(hidden_size, num_heads * D, bias=qkv_bias)
        self.k_proj = Linear(hidden_size, num_kv_heads * D, bias=qkv_bias)
        self.v_proj = Linear(hidden_size, num_kv_heads * D, bias=qkv_bias)
        self.o_proj = Linear(num_heads * D, hidden_size, bias=False)
        self.rotary_emb = rotary if rotary is not None else RotaryEmbedding(D, max_position, rope_base, rope_scaling)

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        past_key_value: KVCache | None = None,
        use_cache: bool = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        B, T, _ = x.shape
        D = self.head_dim
        past = 0 if past_key_value is None else past_key_value[0].shape[2]
        q = self.q_proj(x).view(B, T, self.num_heads, D).transpose(1, 2)  # (B, Hq, T, D)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, D).transpose(1, 2)  # (B, Hkv, T, D)

        if position_embeddings is None:
            if position_ids is None:
                position_ids = torch.arange(past, past + T, device=x.device)  # (T,)
            position_embeddings = self.rotary_emb(position_ids)  # (B, T, D) or (T, D) each
        cos, sin = position_embeddings
        q = ops.apply_rope(q, cos, sin)  # (B, Hq, T, D)
        k = ops.apply_rope(k, cos, sin)  # (B, Hkv, T, D)

        if past_key_value is not None:
            k = torch.cat((past_key_value[0], k), dim=2)  # (B, Hkv, S, D), S = past + T
            v = torch.cat((past_key_value[1], v), dim=2)
        y = ops.attention(
            q, k, v,
            causal=True,
            window=self.sliding_window,
            key_padding_mask=key_padding_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )  # (B, Hq, T, D)  # fmt: skip
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * D)  # (B, T, Hq * D)
        out = self.o_proj(y)  # (B, T, C)
        return (out, (k, v)) if use_cache else out

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"sliding_window={self.sliding_window}"
        )

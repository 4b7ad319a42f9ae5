"""Multi-head causal self-attention, the GPT-2 way.

One projection ``c_attn`` makes queries, keys and values for all heads at once,
``ops.attention`` mixes the values, ``c_proj`` projects back::

    x (B, T, C) --c_attn--> q, k, v (B, T, C) each --split heads--> (B, H, T, D), C = H * D
      --attention--> (B, H, T, D) --merge heads--> (B, T, C) --c_proj--> dropout --> (B, T, C)

Without a KV cache (training, a prompt) the middle three steps are one op,
``ops.qkv_attention(qkv, H)``: the same numbers, but its backward writes the gradients
of q, k and v into one (B, T, 3C) tensor for ``c_attn``, where autograd would
concatenate three.

The parameter names are those of Hugging Face's GPT-2 (``attn.c_attn``,
``attn.c_proj``). One difference to keep in mind when loading a checkpoint: HF's
GPT-2 stores these weights in a ``Conv1D`` of shape (in, out), the transpose of
the (out, in) ``weight`` of ``Linear`` here.

Two dropouts, as in GPT-2: on the attention probabilities (``attention_dropout``,
GPT-2's ``attn_pdrop``, passed to ``ops.attention`` as ``dropout_p`` only in
training mode) and on the output (``resid_dropout``, GPT-2's ``resid_pdrop``).
``model.eval()`` turns both off.

The arguments are the Hugging Face config names (``hidden_size``,
``num_attention_heads``; GPT-2's config answers to these too, for its ``n_embd``
and ``n_head``).
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.attention.cached import cached_attention, check_static_cache
from llm_course.models.components.checks import check_hidden_states, positive_int, probability
from llm_course.models.components.linear import Linear

KVCache = tuple[torch.Tensor, torch.Tensor]  # (k, v), each (B, Hkv, S, D)


class MultiHeadAttention(nn.Module):
    """GPT-2 attention: ``forward(x) -> (B, T, C)``; x (B, T, C) with C = hidden_size.

    ``MultiHeadAttention(hidden_size, num_attention_heads, bias=True, attention_dropout=0.0,
    resid_dropout=0.0, causal=True)``; the head size is ``hidden_size / num_attention_heads``.

    ``forward(x, key_padding_mask=None, past_key_value=None, use_cache=False)``:

    * ``key_padding_mask`` (B, S) bool, True for real tokens (S = past + T).
    * ``past_key_value``: the (k, v) of earlier tokens, each (B, H, S_past, D); the
      new keys and values are appended to them.
    * ``use_cache=True`` returns ``(out, (k, v))`` with all S_past + T keys and
      values, to feed back as ``past_key_value`` next step; otherwise just ``out``.
    * ``kv_cache``: this layer's slot in a static cache (``KVCache.layers[i]``, see
      ``llm_course/models/kv_cache.py``), written in place; the padding is then the
      cache's, so ``key_padding_mask`` and ``past_key_value`` stay None.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        *,
        bias: bool = True,
        attention_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        causal: bool = True,
    ):
        super().__init__()
        name = "MultiHeadAttention"
        hidden_size = positive_int(name, "hidden_size", hidden_size)
        num_attention_heads = positive_int(name, "num_attention_heads", num_attention_heads)
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"{name}: hidden_size={hidden_size} does not divide evenly into num_attention_heads="
                f"{num_attention_heads} heads (the head size would be {hidden_size / num_attention_heads:g})"
            )
        self.hidden_size, self.num_attention_heads = hidden_size, num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.causal = causal
        self.attention_dropout = probability(name, "attention_dropout", attention_dropout)
        self.c_attn = Linear(hidden_size, 3 * hidden_size, bias=bias)  # x -> [q | k | v]
        self.c_proj = Linear(hidden_size, hidden_size, bias=bias)
        self.resid_dropout = nn.Dropout(probability(name, "resid_dropout", resid_dropout))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.num_attention_heads, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        past_key_value: KVCache | None = None,
        use_cache: bool = False,
        kv_cache=None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        check_hidden_states("MultiHeadAttention", x, self.hidden_size)
        B, T, C = x.shape
        if kv_cache is None and past_key_value is None and not use_cache:  # training, or a prompt with no cache
            # one op from the packed projection: its backward hands c_attn one (B, T, 3C)
            # gradient, where splitting here would make autograd concatenate three
            y = ops.qkv_attention(
                self.c_attn(x), self.num_attention_heads,
                causal=self.causal,
                key_padding_mask=key_padding_mask,
                dropout_p=self.attention_dropout if self.training else 0.0,
            )  # (B, T, C), heads merged  # fmt: skip
            return self.resid_dropout(self.c_proj(y))
        q, k, v = self.c_attn(x).split(self.hidden_size, dim=-1)  # 3 x (B, T, C)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (B, H, T, D)
        if kv_cache is not None:  # a static cache: write k, v in place, attend over the filled slots
            check_static_cache("MultiHeadAttention", self.causal, key_padding_mask, past_key_value, use_cache)
            y = cached_attention(q, k, v, kv_cache)  # (B, H, T, D)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))
        if past_key_value is not None:
            k = torch.cat((past_key_value[0], k), dim=2)  # (B, H, S, D), S = S_past + T
            v = torch.cat((past_key_value[1], v), dim=2)
        y = ops.attention(
            q, k, v,
            causal=self.causal,
            key_padding_mask=key_padding_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )  # (B, H, T, D)  # fmt: skip
        y = y.transpose(1, 2).reshape(B, T, C)  # merge the heads: (B, T, C)
        out = self.resid_dropout(self.c_proj(y))
        return (out, (k, v)) if use_cache else out

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_attention_heads={self.num_attention_heads}, "
            f"causal={self.causal}, attention_dropout={self.attention_dropout}"
        )

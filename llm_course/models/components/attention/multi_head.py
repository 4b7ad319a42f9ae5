"""Multi-head causal self-attention, the GPT-2 way.

One projection ``c_attn`` makes queries, keys and values for all heads at once,
``ops.attention`` mixes the values, ``c_proj`` projects back::

    x (B, T, C) --c_attn--> q, k, v (B, T, C) each --split heads--> (B, H, T, D), C = H * D
      --attention--> (B, H, T, D) --merge heads--> (B, T, C) --c_proj--> dropout --> (B, T, C)

The parameter names are those of Hugging Face's GPT-2 (``attn.c_attn``,
``attn.c_proj``). One difference to keep in mind when loading a checkpoint: HF's
GPT-2 stores these weights in a ``Conv1D`` of shape (in, out), the transpose of
the (out, in) ``weight`` of ``Linear`` here.

Two dropouts, as in GPT-2: on the attention probabilities (``attn_dropout``,
passed to ``ops.attention`` as ``dropout_p`` only in training mode) and on the
output (``resid_dropout``). ``model.eval()`` turns both off.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.linear import Linear

KVCache = tuple[torch.Tensor, torch.Tensor]  # (k, v), each (B, Hkv, S, D)


class MultiHeadAttention(nn.Module):
    """GPT-2 attention: ``forward(x) -> (B, T, C)``; x (B, T, C) with C = d_model.

    ``MultiHeadAttention(d_model, num_heads, bias=True, attn_dropout=0.0, resid_dropout=0.0, causal=True)``.

    ``forward(x, key_padding_mask=None, past_key_value=None, use_cache=False)``:

    * ``key_padding_mask`` (B, S) bool, True for real tokens (S = past + T).
    * ``past_key_value``: the (k, v) of earlier tokens, each (B, H, S_past, D); the
      new keys and values are appended to them.
    * ``use_cache=True`` returns ``(out, (k, v))`` with all S_past + T keys and
      values, to feed back as ``past_key_value`` next step; otherwise just ``out``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        bias: bool = True,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        causal: bool = True,
    ):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"MultiHeadAttention: d_model={d_model} is not a multiple of num_heads={num_heads}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.causal, self.attn_dropout = causal, attn_dropout
        self.c_attn = Linear(d_model, 3 * d_model, bias=bias)  # x -> [q | k | v]
        self.c_proj = Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(resid_dropout)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        past_key_value: KVCache | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.d_model, dim=-1)  # 3 x (B, T, C)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (B, H, T, D)
        if past_key_value is not None:
            k = torch.cat((past_key_value[0], k), dim=2)  # (B, H, S, D), S = S_past + T
            v = torch.cat((past_key_value[1], v), dim=2)
        y = ops.attention(
            q, k, v,
            causal=self.causal,
            key_padding_mask=key_padding_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, H, T, D)  # fmt: skip
        y = y.transpose(1, 2).reshape(B, T, C)  # merge the heads: (B, T, C)
        out = self.resid_dropout(self.c_proj(y))
        return (out, (k, v)) if use_cache else out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, causal={self.causal}, attn_dropout={self.attn_dropout}"

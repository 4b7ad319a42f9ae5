"""Qwen2, built from the course's components.

    input_ids (B, T) --embed_tokens--> (B, T, C)
      n_layer x Qwen2DecoderLayer:
          x = x + self_attn(input_layernorm(x), cos/sin of the positions)
          x = x + mlp(post_attention_layernorm(x))
      --norm--> (B, T, C) --lm_head--> logits (B, T, V)

What changed since GPT-2 (the same pre-norm residual stream otherwise):

* **RMSNorm** instead of LayerNorm: no mean subtraction, no bias.
* **Rotary positions** (RoPE) instead of a learned table: queries and keys are rotated by
  an angle proportional to their position, so a score depends on the *distance* between
  two tokens. One :class:`RotaryEmbedding` (``model.rotary_emb``) computes cos and sin once
  per forward for all layers.
* **Grouped-query attention**: ``num_kv_heads`` key/value heads shared by ``n_head`` query
  heads, which shrinks the KV cache by ``n_head / num_kv_heads``; biases on q, k, v only.
* **SwiGLU MLP** (``gate_proj``, ``up_proj``, ``down_proj``, no biases).
* Optionally a **sliding window** on some layers (``config.layer_window(i)``).

Parameter names are exactly those of transformers' ``Qwen2ForCausalLM`` (``model.layers.0.
self_attn.q_proj.weight``, ...). With ``tie_word_embeddings`` (the small Qwen2 models),
``lm_head.weight`` is ``model.embed_tokens.weight``.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components import GatedMLP, GroupedQueryAttention, Linear, RMSNorm, RotaryEmbedding, TokenEmbedding
from llm_course.models.config import Qwen2Config
from llm_course.models.gpt2 import check_attention_mask, check_input_ids, default_position_ids
from llm_course.models.kv_cache import KVCache


class Qwen2DecoderLayer(nn.Module):
    """One Qwen2 layer: ``x + self_attn(input_layernorm(x))``, then ``+ mlp(post_attention_layernorm(x))``."""

    def __init__(self, config: Qwen2Config, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        C = config.n_embd
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(C, eps=config.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(
            C, config.n_head, config.num_kv_heads,
            head_dim=config.head_dim, rotary=rotary, qkv_bias=config.qkv_bias,
            sliding_window=config.layer_window(layer_idx), attention_dropout=config.attention_dropout,
        )  # fmt: skip
        self.post_attention_layernorm = RMSNorm(C, eps=config.rms_norm_eps)
        self.mlp = GatedMLP(C, config.intermediate_size)

    def forward(self, x, position_embeddings, key_padding_mask=None, kv_cache=None) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), position_embeddings=position_embeddings,
                           key_padding_mask=key_padding_mask, kv_cache=kv_cache)  # fmt: skip
        # Under autocast a sub-layer returns bfloat16; the residual stream keeps its own dtype (fp32).
        # x + h and its norm in one pass over memory (as GPT-2's Block); y in h's dtype
        x, y = self.post_attention_layernorm.add_and_norm(x, h)  # (B, T, C) each
        return ops.add(x, self.mlp(y).to(x.dtype))  # (B, T, C)


class Qwen2Model(nn.Module):
    """The transformer without its output layer (HF's ``Qwen2Model``, the ``model.`` prefix)."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.embed_tokens = TokenEmbedding(config.vocab_size, config.n_embd)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.block_size, config.rope_base, config.rope_scaling)
        self.layers = nn.ModuleList([Qwen2DecoderLayer(config, i, self.rotary_emb) for i in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, eps=config.rms_norm_eps)

    def rope(self, position_ids: torch.Tensor, kv_cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, T, D) for these positions. With a cache, without reading them back to the host."""
        if kv_cache is None:
            return self.rotary_emb(position_ids)  # checks the positions (a host sync)
        # Positions are below the cache's max_len by construction: make the tables that long
        # (host ints only; "dynamic" scaling depends on the current length), then gather rows
        # on the device.
        rotary = self.rotary_emb
        rotary._ensure(kv_cache.length if rotary.rope_type == "dynamic" else kv_cache.max_len)
        return self.rotary_emb.cos_cached[position_ids], self.rotary_emb.sin_cached[position_ids]

    def forward(self, input_ids, position_ids, key_padding_mask=None, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rope(position_ids, kv_cache)  # (B, T, D) each, float32
        position_embeddings = (cos.to(x.dtype), sin.to(x.dtype))  # as transformers: rotate in the model's dtype
        for i, layer in enumerate(self.layers):
            x = layer(x, position_embeddings, key_padding_mask, None if kv_cache is None else kv_cache.layers[i])
        return self.norm(x)  # (B, T, C)


class Qwen2ForCausalLM(nn.Module):
    """Qwen2 with its language-model head: ``forward(input_ids) -> logits (B, T, vocab_size)``.

    ``forward(input_ids, *, position_ids=None, attention_mask=None, kv_cache=None)`` as
    :class:`~llm_course.models.gpt2.GPT2LMHeadModel`'s: ``attention_mask`` (B, S) with
    1/True for real tokens (S = T, or all tokens so far with a cache), ``position_ids``
    (B, T) by default from the mask or the cache, ``kv_cache`` from :meth:`new_kv_cache`.
    """

    def __init__(self, config: Qwen2Config):
        super().__init__()
        if not isinstance(config, Qwen2Config):
            raise TypeError(f"Qwen2ForCausalLM: config must be a Qwen2Config, got {type(config).__name__}")
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.init_weights()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter, two uses

    @torch.no_grad()
    def init_weights(self) -> None:
        """As transformers' Qwen2: N(0, initializer_range) for matrices and the token table, zeros for
        biases, ones for the RMSNorm gains."""
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=self.config.initializer_range)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype=None, device=None) -> KVCache:
        """An empty static cache for ``batch_size`` rows of up to ``max_len`` tokens (default block_size).

        Layers with a sliding window shorter than ``max_len`` get a ring of ``window`` slots.
        """
        c = self.config
        max_len = c.block_size if max_len is None else max_len
        w = self.lm_head.weight
        windows = [c.layer_window(i) for i in range(c.n_layer)]
        return KVCache(c.n_layer, batch_size, c.num_kv_heads, c.head_dim, max_len, windows=windows,
                       dtype=dtype or w.dtype, device=device or w.device)  # fmt: skip

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V); with ``return_hidden`` the last hidden states (B, T, C) instead, before the
        output layer (a fused loss multiplies them by ``lm_head.weight`` itself, chunk by chunk)."""
        B, T = check_input_ids("Qwen2ForCausalLM", input_ids)
        key_padding_mask = None
        if kv_cache is not None:
            cache_positions = kv_cache.begin(T, attention_mask)  # (B, T); records the padding in the cache
            position_ids = cache_positions if position_ids is None else position_ids
        else:
            if attention_mask is not None:
                key_padding_mask = check_attention_mask("Qwen2ForCausalLM", attention_mask, B, T)
            if position_ids is None:
                position_ids = default_position_ids(B, T, key_padding_mask, input_ids.device)  # below T
                self.model.rotary_emb.cover(T)  # RoPE extends past block_size; a compiled step cannot grow it
        h = self.model(input_ids, position_ids.expand(B, T), key_padding_mask, kv_cache)  # (B, T, C)
        return h if return_hidden else self.lm_head(h)  # (B, T, V)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters, a tied matrix counted once; ``non_embedding`` leaves out the token table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, ``6 N + 12 L Hq D T`` (see ``GPT2LMHeadModel.flops_per_token``).

        N leaves out the token table unless it is tied (then it is the output layer's matrix).
        The attention term uses the query width Hq * D and ``seq_len`` keys (default block_size;
        a sliding window caps the keys at ``window`` on its layers).
        """
        c = self.config
        T = c.block_size if seq_len is None else seq_len
        n = self.num_parameters()
        if not c.tie_word_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        keys = [min(T, c.layer_window(i) or T) for i in range(c.n_layer)]
        return 6.0 * n + 12.0 * c.n_head * c.head_dim * sum(keys)

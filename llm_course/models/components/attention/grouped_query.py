"""Grouped-query attention with rotary positions, the Qwen2 / Llama way.

Fewer key/value heads than query heads: ``num_key_value_heads`` divides
``num_attention_heads`` and each group of ``G = num_attention_heads / num_key_value_heads``
query heads shares one key and one value head. Multi-head attention is G = 1;
multi-query attention is ``num_key_value_heads = 1``. The KV cache, which holds K and V
for every past token (the memory that limits long generations), shrinks by G.

    x (B, T, C) --q_proj--> (B, Hq, T, D) --RoPE--\\
                --k_proj--> (B, Hkv, T, D) --RoPE--+-- [append to cache] --attention--> (B, Hq, T, D)
                --v_proj--> (B, Hkv, T, D) --------/
      --merge heads--> (B, T, Hq * D) --o_proj--> (B, T, C)

Names and biases follow Hugging Face's Qwen2 (``self_attn.q_proj``, ...): q, k and
v projections with a bias (``qkv_bias=True``; Llama has none: its config's
``attention_bias`` is False), ``o_proj`` without. ``ops.attention`` broadcasts each
kv head over its group; nothing is repeated here. The arguments are the config keys
of Qwen2 and Llama (``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``max_position_embeddings``, ``rope_theta``, ``rope_scaling``,
``sliding_window``, ``attention_dropout``), so a config's values pass straight through.

Positions are explicit: ``position_ids`` (B, T) give each token's position, which
is how padding on the left and a KV cache (new tokens at positions S_past ..)
are handled. Keys go into the cache already rotated.

``rope_interleaved=True`` rotates adjacent features ``(2i, 2i+1)`` together, as GPT-J
and Meta's original Llama code do, instead of ``(i, i + D/2)`` (Hugging Face's
rotate-half). The two are the same rotation up to a permutation of the features
(``rotary.deinterleave``). The layer permutes q and k into the rotate-half order and
rotates them with ``ops.apply_rope``; it never permutes them back, because a score
``q . k`` is the same whatever order the features are in, as long as q and k share
it. (Converting a Meta checkpoint to HF format folds the same permutation into the
rows of ``q_proj`` and ``k_proj`` once, instead.)

For decoding, :meth:`GroupedQueryAttention.fuse_projections` stacks the q, k and v
weights into one matrix (``components/fused.py``; the Parameters become views of its
rows, the names and state dict stay): in eval mode without autograd the layer then
runs one ``ops.linear`` and one ``ops.apply_rope`` over the query and key heads of its
output together, instead of three products and two rotations.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.attention.cached import cached_attention, check_static_cache
from llm_course.models.components.checks import check_hidden_states, positive_int, probability
from llm_course.models.components.embeddings.rotary import RotaryEmbedding, check_rope_arguments, deinterleave
from llm_course.models.components.fused import FusedProjection, use_fused
from llm_course.models.components.linear import Linear

KVCache = tuple[torch.Tensor, torch.Tensor]  # (k, v), each (B, Hkv, S, D)


class GroupedQueryAttention(nn.Module):
    """GQA self-attention with RoPE: ``forward(x, position_ids) -> (B, T, C)``.

    Arguments: ``hidden_size`` C; ``num_attention_heads`` Hq; ``num_key_value_heads``
    Hkv dividing Hq (default Hq, as in HF's configs); ``head_dim`` D (default C / Hq,
    which must then divide evenly); ``max_position_embeddings``, ``rope_theta``,
    ``rope_scaling`` for the rotary tables (or ``rotary``, a :class:`RotaryEmbedding`
    shared by all layers of a model, to keep one copy of its tables);
    ``rope_interleaved``; ``qkv_bias``; ``sliding_window`` (None: full causal
    attention); ``attention_dropout``.

    ``forward(x, position_ids=None, key_padding_mask=None, past_key_value=None,
    use_cache=False, position_embeddings=None)``:

    * ``position_ids`` (B, T) or (T,) int; default S_past .. S_past + T - 1.
    * ``key_padding_mask`` (B, S) bool, True for real tokens, S = S_past + T.
    * ``past_key_value``: (k, v) of earlier tokens, each (B, Hkv, S_past, D).
    * ``use_cache=True`` returns ``(out, (k, v))`` with all S keys and values.
    * ``position_embeddings``: (cos, sin) already computed for ``position_ids``
      (a model computes them once for all its layers).
    * ``kv_cache``: this layer's slot in a static cache (``KVCache.layers[i]``, see
      ``llm_course/models/kv_cache.py``), written in place; ``position_ids`` (or
      ``position_embeddings``) are then required, and the padding is the cache's.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        num_key_value_heads: int | None = None,
        *,
        head_dim: int | None = None,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        rope_interleaved: bool = False,
        rotary: RotaryEmbedding | None = None,
        qkv_bias: bool = True,
        sliding_window: int | None = None,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        name = "GroupedQueryAttention"
        C = positive_int(name, "hidden_size", hidden_size)
        Hq = positive_int(name, "num_attention_heads", num_attention_heads)
        Hkv = Hq if num_key_value_heads is None else positive_int(name, "num_key_value_heads", num_key_value_heads)
        if Hq % Hkv != 0:
            raise ValueError(
                f"{name}: num_key_value_heads={Hkv} does not divide num_attention_heads={Hq}: "
                f"each key/value head must serve the same number of query heads"
            )
        if head_dim is None:
            if C % Hq != 0:
                raise ValueError(
                    f"{name}: head_dim is not given and hidden_size={C} does not divide evenly into "
                    f"num_attention_heads={Hq} heads ({C / Hq:g} each); pass head_dim explicitly"
                )
            head_dim = C // Hq
        D = positive_int(name, "head_dim", head_dim)
        if sliding_window is not None:
            positive_int(name, "sliding_window", sliding_window)
        if rotary is None:  # checked here, so that an error names this layer
            check_rope_arguments(name, D, rope_theta, rope_scaling, max_position_embeddings)
        elif rotary.head_dim != D:
            raise ValueError(f"{name}: the shared rotary has head_dim={rotary.head_dim}, but this layer's head_dim={D}")
        self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim = C, Hq, Hkv, D
        self.sliding_window, self.rope_interleaved = sliding_window, rope_interleaved
        self.attention_dropout = probability(name, "attention_dropout", attention_dropout)
        self.q_proj = Linear(C, Hq * D, bias=qkv_bias)
        self.k_proj = Linear(C, Hkv * D, bias=qkv_bias)
        self.v_proj = Linear(C, Hkv * D, bias=qkv_bias)
        self.o_proj = Linear(Hq * D, C, bias=False)
        if rotary is None:
            rotary = RotaryEmbedding(D, max_position_embeddings, rope_theta, rope_scaling)
        self.rotary_emb = rotary
        self.fused_qkv: FusedProjection | None = None  # set by fuse_projections(): q, k, v in one product

    def fuse_projections(self) -> None:
        """For inference: q_proj, k_proj and v_proj as one (Hq + 2 Hkv) * D-row product (``components/fused.py``)."""
        self.fused_qkv = FusedProjection([self.q_proj, self.k_proj, self.v_proj])

    def unfuse_projections(self) -> None:
        if self.fused_qkv is not None:
            self.fused_qkv.unfuse()
            self.fused_qkv = None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.fused_qkv is not None:  # .to() / .half() gave the projections new tensors: stack those
            self.fused_qkv = self.fused_qkv.fuse_again()
        return self

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        past_key_value: KVCache | None = None,
        use_cache: bool = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache=None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        check_hidden_states("GroupedQueryAttention", x, self.hidden_size)
        B, T, _ = x.shape
        Hq, Hkv, D = self.num_attention_heads, self.num_key_value_heads, self.head_dim
        past = 0 if past_key_value is None else past_key_value[0].shape[2]
        fused = use_fused(self, self.fused_qkv)
        if fused:  # one product, then views: heads 0..Hq-1 are q, then Hkv of k, then Hkv of v
            qkv = self.fused_qkv(x).view(B, T, Hq + 2 * Hkv, D).transpose(1, 2)  # (B, Hq + 2 Hkv, T, D)
            qk, v = qkv[:, : Hq + Hkv], qkv[:, Hq + Hkv :]  # (B, Hq + Hkv, T, D), (B, Hkv, T, D)
        else:
            q = self.q_proj(x).view(B, T, Hq, D).transpose(1, 2)  # (B, Hq, T, D)
            k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
            v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)

        if kv_cache is not None:
            check_static_cache("GroupedQueryAttention", True, key_padding_mask, past_key_value, use_cache)
            if position_ids is None and position_embeddings is None:
                raise ValueError("GroupedQueryAttention: with a kv_cache, pass position_ids (from cache.begin(T, "
                                 "attention_mask)) or position_embeddings")  # fmt: skip
        if position_embeddings is None:
            if position_ids is None:
                position_ids = torch.arange(past, past + T, device=x.device)  # (T,)
            position_embeddings = self.rotary_emb(position_ids)  # (B, T, D) or (T, D) each
        cos, sin = position_embeddings
        if fused:  # queries and keys are heads of one tensor: rotate them all in one launch
            if self.rope_interleaved:  # pairs (2i, 2i+1) -> (i, i + D/2), the same order for q and k
                qk = deinterleave(qk)
            qk = ops.apply_rope(qk, cos, sin)  # (B, Hq + Hkv, T, D)
            q, k = qk[:, :Hq], qk[:, Hq:]  # (B, Hq, T, D), (B, Hkv, T, D): views
        else:
            if self.rope_interleaved:  # pairs (2i, 2i+1) -> (i, i + D/2), the same order for q and k
                q, k = deinterleave(q), deinterleave(k)
            q = ops.apply_rope(q, cos, sin)  # (B, Hq, T, D)
            k = ops.apply_rope(k, cos, sin)  # (B, Hkv, T, D)

        if kv_cache is not None:  # a static cache: keys go in already rotated
            y = cached_attention(q, k, v, kv_cache, window=self.sliding_window)  # (B, Hq, T, D)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, Hq * D))
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
        y = y.transpose(1, 2).reshape(B, T, Hq * D)  # (B, T, Hq * D)
        out = self.o_proj(y)  # (B, T, C)
        return (out, (k, v)) if use_cache else out

    def extra_repr(self) -> str:
        interleaved = ", rope_interleaved=True" if self.rope_interleaved else ""
        return (
            f"hidden_size={self.hidden_size}, num_attention_heads={self.num_attention_heads}, "
            f"num_key_value_heads={self.num_key_value_heads}, head_dim={self.head_dim}, "
            f"sliding_window={self.sliding_window}{interleaved}"
        )

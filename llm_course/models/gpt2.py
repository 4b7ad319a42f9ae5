"""GPT-2, built from the course's components.

    input_ids (B, T) --wte--> (B, T, C)  +  wpe[positions] (B, T, C)  --dropout-->
      n_layer x Block:   x = x + attn(ln_1(x));   x = x + mlp(ln_2(x))   (each add done by the norm after it)
      --ln_f--> (B, T, C) --lm_head--> logits (B, T, V)

A *pre-norm* transformer: each block normalizes its input before attention and before
the MLP and adds the result back (the residual stream ``x`` itself is never normalized
until ``ln_f``). Positions are a learned table ``wpe`` of ``block_size`` vectors, so the
model cannot look at more than ``block_size`` tokens. The output layer ``lm_head`` shares
its weight with the token table ``wte`` (tied embeddings).

Parameter names are exactly those of transformers' ``GPT2LMHeadModel`` (``transformer.h.0.
attn.c_attn.weight``, ...), with one difference: HF stores the four projection matrices of
each block in ``Conv1D`` modules, shape (in, out); here they are ``Linear``, shape (out, in).
``llm_course.models.hf_weights`` transposes them when loading a checkpoint.

Every computation goes through ``llm_course.ops`` (inside the components, and ``ops.add``
for the residual additions), so ``use_backend("triton")`` runs the whole model on the
Triton kernels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components import MLP, LayerNorm, LearnedPositionalEmbedding, Linear, MultiHeadAttention, TokenEmbedding
from llm_course.models.config import GPT2Config
from llm_course.models.kv_cache import KVCache


class Block(nn.Module):
    """One GPT-2 layer: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(x))``, on a (B, T, C) stream.

    Each residual add is done by the norm that follows it, in the same pass over memory
    (``LayerNorm.add_and_norm``: the same numbers as ``x = x + h; ln(x)``, read and written
    once instead of twice). The add after attention is done by ``ln_2``. The add after the MLP
    is followed by the *next* block's ``ln_1``, so the block hands it on undone (after the
    last block, the model adds it before ``ln_f``)::

        forward(x, pending) -> (x, mlp_out)     # the stream is x + mlp_out; the next norm adds it

    ``pending`` is the previous block's ``mlp_out`` (None for the first block).
    """

    def __init__(self, config: GPT2Config):
        super().__init__()
        C = config.n_embd
        self.ln_1 = LayerNorm(C, eps=config.layer_norm_eps)
        self.attn = MultiHeadAttention(C, config.n_head, attention_dropout=config.attn_pdrop,
                                       resid_dropout=config.resid_pdrop)  # fmt: skip
        self.ln_2 = LayerNorm(C, eps=config.layer_norm_eps)
        self.mlp = MLP(C, config.intermediate_size, resid_dropout=config.resid_pdrop)

    def forward(
        self, x: torch.Tensor, pending: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
        kv_cache=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        # Under autocast a sub-layer returns bfloat16; the residual stream keeps its own dtype (fp32),
        # and each norm's output takes the sub-layer's dtype.
        if pending is None:
            y = self.ln_1(x)  # (B, T, C)
        else:
            x, y = self.ln_1.add_and_norm(x, pending)  # x + pending, and ln_1 of it, in one pass
        h = self.attn(y, key_padding_mask=key_padding_mask, kv_cache=kv_cache)  # (B, T, C)
        x, y = self.ln_2.add_and_norm(x, h)  # x + h and ln_2(x + h), in one pass
        return x, self.mlp(y)  # the stream, and the MLP's output still to add to it


class GPT2Model(nn.Module):
    """The transformer without its output layer (HF's ``GPT2Model``, the ``transformer.`` prefix).

    Holds ``wte``, ``wpe``, ``drop``, ``h`` (the blocks) and ``ln_f``; ``forward`` returns
    the final hidden states (B, T, C). :class:`GPT2LMHeadModel` prepares its arguments.
    """

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.wte = TokenEmbedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositionalEmbedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_eps)

    def forward(self, input_ids, position_ids, key_padding_mask=None, kv_cache: KVCache | None = None) -> torch.Tensor:
        if kv_cache is None:
            pos = self.wpe(position_ids)  # (B, T, C); checks the range (reading the positions back to the host)
        else:  # in range by construction (max_len <= block_size), looked up without a host sync
            pos = ops.embedding(position_ids, self.wpe.weight)  # (B, T, C)
        x, pending = self.drop(ops.add(self.wte(input_ids), pos)), None  # (B, T, C)
        for i, block in enumerate(self.h):
            x, pending = block(x, pending, key_padding_mask, None if kv_cache is None else kv_cache.layers[i])
        # The last block's MLP output is added on its own, and ln_f is a plain norm: fused, the
        # loss would be the first custom op that torch.compile meets with the whole residual
        # stream behind its input, which older PyTorch prints in full (tests/test_compile_inductor.py).
        if pending is not None:
            x = ops.add(x, pending.to(x.dtype))
        return self.ln_f(x)  # (B, T, C)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with its language-model head: ``forward(input_ids) -> logits (B, T, vocab_size)``.

    ``forward(input_ids, *, position_ids=None, attention_mask=None, kv_cache=None)``:

    * ``input_ids`` (B, T) int64 token ids.
    * ``attention_mask`` (B, S), 1/True for real tokens and 0/False for (left) padding;
      S = T without a cache, and all tokens so far (this call's included) with one.
    * ``position_ids`` (B, T): default 0 .. T-1, or with a mask the count of real tokens
      before each one (as transformers does), or with a cache the positions after the
      cached tokens.
    * ``kv_cache``: a :class:`KVCache` from :meth:`new_kv_cache`, filled in place.

    Logits come in the model's dtype.
    """

    def __init__(self, config: GPT2Config):
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"GPT2LMHeadModel: config must be a GPT2Config, got {type(config).__name__}")
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.init_weights()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # one Parameter, two uses

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's initialization (as transformers'): N(0, 0.02) for matrices and tables, zeros for
        biases, ones for LayerNorm gains; the projections that write into the residual stream
        (``c_proj``) get std 0.02 / sqrt(2 * n_layer), so that the stream's variance does not
        grow with depth (two writes per layer)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layer))
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=std)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype=None, device=None) -> KVCache:
        """An empty static cache for ``batch_size`` rows of up to ``max_len`` tokens (default block_size)."""
        c = self.config
        max_len = c.block_size if max_len is None else max_len
        if max_len > c.block_size:
            raise ValueError(f"GPT2LMHeadModel.new_kv_cache: max_len={max_len} exceeds the model's block_size="
                             f"{c.block_size} (it has no position vector beyond)")  # fmt: skip
        w = self.lm_head.weight
        return KVCache(c.n_layer, batch_size, c.n_head, c.head_dim, max_len,
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
        B, T = check_input_ids("GPT2LMHeadModel", input_ids)
        key_padding_mask = None
        if kv_cache is not None:
            cache_positions = kv_cache.begin(T, attention_mask)  # (B, T); records the padding in the cache
            position_ids = cache_positions if position_ids is None else position_ids
        else:
            if T > self.config.block_size:
                raise ValueError(f"GPT2LMHeadModel: {T} tokens, but the model has positions for block_size="
                                 f"{self.config.block_size}")  # fmt: skip
            if attention_mask is not None:
                key_padding_mask = check_attention_mask("GPT2LMHeadModel", attention_mask, B, T)
            if position_ids is None:
                position_ids = default_position_ids(B, T, key_padding_mask, input_ids.device)
        h = self.transformer(input_ids, position_ids.expand(B, T), key_padding_mask, kv_cache)  # (B, T, C)
        return h if return_hidden else self.lm_head(h)  # (B, T, V)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters, a tied matrix counted once; ``non_embedding`` leaves out wte and wpe."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared Parameter once
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), ``6 N + 12 L C T`` (Kaplan et al.; PaLM's appendix).

        N counts the parameters used in matrix products (everything but the position table, and
        but the token table when it is not tied to the output layer: a lookup is no product);
        each costs 2 FLOPs forward and 4 backward. The attention term counts ``q @ k^T`` and
        ``p @ v`` over ``seq_len`` keys (default block_size) without skipping masked ones. A
        forward pass alone costs a third.
        """
        c = self.config
        T = c.block_size if seq_len is None else seq_len
        n = self.num_parameters() - self.transformer.wpe.weight.numel()
        if not c.tie_word_embeddings:
            n -= self.transformer.wte.weight.numel()
        return 6.0 * n + 12.0 * c.n_layer * c.n_embd * T


# --- what both models share -----------------------------------------------------------------------


def check_input_ids(model: str, input_ids: torch.Tensor) -> tuple[int, int]:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        got = f"{str(input_ids.dtype).removeprefix('torch.')} {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) \
            else type(input_ids).__name__  # fmt: skip
        raise ValueError(f"{model}: input_ids must be an int64 tensor of shape (B, T), got {got}")
    return input_ids.shape[0], input_ids.shape[1]


def check_attention_mask(model: str, attention_mask: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """attention_mask (B, S) of 0/1 or bool -> bool (True = a real token)."""
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, S):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"{model}: attention_mask must be (B, S) = ({B}, {S}), got {got}")
    return attention_mask.bool()


def default_position_ids(B: int, T: int, key_padding_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Positions without a cache: 0 .. T-1, or, with padding, the number of real tokens before each token
    (``cumsum(mask) - 1``, clamped at 0 for the padding itself), as transformers computes them. -> (B, T)."""
    if key_padding_mask is None:
        return torch.arange(T, device=device).expand(B, T)
    return (key_padding_mask.to(torch.int64).cumsum(dim=1) - 1).clamp(min=0)

"""The baseline of ``llm-course bench train``: GPT-2 written plainly in PyTorch, as nanoGPT does.

What is a "fast" training step for GPT-2 124M? This module is the yardstick: the smallest
GPT-2 written the way `nanoGPT <https://github.com/karpathy/nanoGPT>`_'s ``model.py`` writes
one, with nothing the course adds:

* q, k and v from one ``nn.Linear`` (``c_attn``), attention by
  ``F.scaled_dot_product_attention(is_causal=True)`` (FlashAttention inside PyTorch);
* LayerNorm and GELU (tanh) from ``torch.nn.functional``, the output layer tied to the
  token table, the loss ``F.cross_entropy`` on the full (B*T, V) logits;
* no backend switch, no input checks, no KV cache, no padding.

The benchmark runs it under ``torch.compile`` with bf16 autocast and the fused AdamW, the
recipe of nanoGPT's ``train.py``. Its weights are initialized the same way as the course's
GPT-2 (normal, std 0.02; the residual projections scaled by 1/sqrt(2 * n_layer)), so both
start at the same loss, but they are not the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_course.models.config import GPT2Config


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.c_fc = nn.Linear(c.n_embd, c.intermediate_size)
        self.c_proj = nn.Linear(c.intermediate_size, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT2(nn.Module):
    """``forward(idx (B, T), targets (B, T)) -> mean cross-entropy``; targets already shifted."""

    def __init__(self, c: GPT2Config):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    def optimizer(self, lr: float = 6e-4, weight_decay: float = 0.1, fused: bool = True) -> torch.optim.AdamW:
        """nanoGPT's AdamW: decay on matrices (and the tied table), none on biases and norms."""
        params = list(dict.fromkeys(self.parameters()))  # the tied weight once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)

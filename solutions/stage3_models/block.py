"""Stage 3 exercise: one transformer block, pre-norm (exercise block_forward).

A GPT-2 or Qwen2 model is a stack of identical blocks. Each block has two
sub-layers, attention (tokens look at each other) and an MLP (each token on
its own), and wraps each one the same way: normalize the input, run the
sub-layer, and *add* its output to the input (a residual connection)::

    h   = x + attn(ln_1(x))        # (B, T, C)
    out = h + mlp(ln_2(h))         # (B, T, C)

This is the *pre-norm* layout of GPT-2 and every model since: the norm sits at
the entrance of each branch, and the residual stream ``x -> h -> out`` itself is
never normalized, so a signal (and its gradient) can pass through a deep stack
untouched. The original Transformer was *post-norm*, ``h = ln_1(x + attn(x))``,
which trains badly without a learning-rate warm-up once it is deep.

The parts are the course's layers (``llm_course.models.components``): GPT-2 uses
``LayerNorm``, ``MultiHeadAttention`` and ``MLP``; Qwen2 ``RMSNorm``,
``GroupedQueryAttention`` and ``GatedMLP``, whose attention also needs the
tokens' positions (``position_ids``) and which keys are padding
(``key_padding_mask``). The course's blocks are ``Block`` in
``llm_course/models/gpt2.py`` and ``Qwen2DecoderLayer`` in
``llm_course/models/qwen2.py`` (look there only once you are done). Check your
work with ``.venv/bin/llm-course grade 3``.
"""

from __future__ import annotations

from typing import Callable

import torch


def block_forward(
    x: torch.Tensor,
    ln_1: Callable[[torch.Tensor], torch.Tensor],
    attn: Callable[..., torch.Tensor],
    ln_2: Callable[[torch.Tensor], torch.Tensor],
    mlp: Callable[[torch.Tensor], torch.Tensor],
    **attn_kwargs,
) -> torch.Tensor:
    """A pre-norm transformer block: ``h = x + attn(ln_1(x))``, then ``h + mlp(ln_2(h))``.

    Args:
        x: (B, T, C) the residual stream entering the block.
        ln_1, ln_2: the two norms (modules or functions), (B, T, C) -> (B, T, C).
            They have different weights: ln_1 belongs to attention, ln_2 to the MLP.
        attn: self-attention, (B, T, C) -> (B, T, C).
        mlp: the feed-forward layer, (B, T, C) -> (B, T, C).
        **attn_kwargs: passed on to ``attn`` unchanged, e.g. ``position_ids``
            (B, T) and ``key_padding_mask`` (B, T) for Qwen2's attention.

    Returns:
        (B, T, C), x's dtype: the residual stream leaving the block.

    Hint: two lines, one per sub-layer. Each sub-layer reads a *normalized copy*
    of the stream and adds its result to the stream *itself* (not to the
    normalized copy). The MLP works on h, the stream after attention.
    """
    # BEGIN EXERCISE block_forward
    # stub raises: "block_forward: two residual branches, each stream + sublayer(its norm(stream)): attention on x, then the MLP on h"
    h = x + attn(ln_1(x), **attn_kwargs)  # (B, T, C): attention branch, then the residual
    return h + mlp(ln_2(h))  # (B, T, C): MLP branch on h, then the residual
    # END EXERCISE block_forward

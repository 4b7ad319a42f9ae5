"""Learned absolute positions, as in GPT-2 (its ``wpe`` table).

Each position 0 .. max_position - 1 owns a trained vector of size d_model; the
model adds the vector of each token's position to the token's embedding::

    h = wte[token_ids] + wpe[position_ids]            (B, T, d_model)

Simple, and the model cannot run past ``max_position`` (1024 for GPT-2): there
is no vector for position 1024. Rotary embeddings (``rotary.py``) have no such
table and encode *relative* positions instead.
"""

from __future__ import annotations

import torch
from torch import nn


class LearnedPositionalEmbedding(nn.Module):
    """A (max_position, d_model) table of position vectors: ``forward(position_ids) -> (..., d_model)``.

    The parameter is ``weight``, so a model that names this module ``wpe`` has the
    state-dict key ``wpe.weight`` of Hugging Face's GPT-2.
    """

    def __init__(self, max_position: int, d_model: int):
        super().__init__()
        self.max_position, self.d_model = max_position, d_model
        self.weight = nn.Parameter(torch.empty(max_position, d_model))
        nn.init.normal_(self.weight, std=0.01)  # GPT-2's initialization of wpe

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """position_ids (B, T) or (T,) int -> (B, T, d_model) or (T, d_model)."""
        if position_ids.dtype.is_floating_point:
            raise TypeError("LearnedPositionalEmbedding: position_ids must be integers")
        if position_ids.numel() and (int(position_ids.max()) >= self.max_position or int(position_ids.min()) < 0):
            raise ValueError(
                f"LearnedPositionalEmbedding: positions must be in 0 .. {self.max_position - 1}, got "
                f"{int(position_ids.min())} .. {int(position_ids.max())}; the model was built for "
                f"{self.max_position} positions"
            )
        return self.weight[position_ids]  # (B, T, d_model)

    def extra_repr(self) -> str:
        return f"max_position={self.max_position}, d_model={self.d_model}"

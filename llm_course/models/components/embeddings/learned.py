"""Learned absolute positions, as in GPT-2 (its ``wpe`` table).

Each position 0 .. max_position_embeddings - 1 owns a trained vector of size
hidden_size; the model adds the vector of each token's position to the token's
embedding::

    h = wte[token_ids] + wpe[position_ids]            (B, T, hidden_size)

Simple, and the model cannot run past ``max_position_embeddings`` (1024 for GPT-2):
there is no vector for position 1024. Rotary embeddings (``rotary.py``) have no such
table and encode *relative* positions instead. The lookup is ``ops.embedding``, the
same op as the token table's.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.device import host_can_read
from llm_course.models.components.checks import positive_int


class LearnedPositionalEmbedding(nn.Module):
    """A (max_position_embeddings, hidden_size) table of position vectors: ``forward(position_ids) -> (..., hidden_size)``.

    The parameter is ``weight``, so a model that names this module ``wpe`` has the
    state-dict key ``wpe.weight`` of Hugging Face's GPT-2.
    """

    def __init__(self, max_position_embeddings: int, hidden_size: int):
        super().__init__()
        name = "LearnedPositionalEmbedding"
        self.max_position_embeddings = positive_int(name, "max_position_embeddings", max_position_embeddings)
        self.hidden_size = positive_int(name, "hidden_size", hidden_size)
        self.weight = nn.Parameter(torch.empty(max_position_embeddings, hidden_size))
        nn.init.normal_(self.weight, std=0.01)  # GPT-2's initialization of wpe

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """position_ids (B, T) or (T,) int -> (B, T, hidden_size) or (T, hidden_size)."""
        if position_ids.dtype.is_floating_point:
            raise TypeError("LearnedPositionalEmbedding: position_ids must be integers")
        if not host_can_read(position_ids):  # while torch.compile traces or a CUDA graph is captured
            return ops.embedding(position_ids, self.weight)
        if position_ids.numel() and (int(position_ids.max()) >= self.max_position_embeddings or int(position_ids.min()) < 0):
            raise ValueError(
                f"LearnedPositionalEmbedding: positions must be in 0 .. {self.max_position_embeddings - 1}, got "
                f"{int(position_ids.min())} .. {int(position_ids.max())}; the model was built for "
                f"{self.max_position_embeddings} positions"
            )
        return ops.embedding(position_ids, self.weight)  # (B, T, hidden_size)

    def extra_repr(self) -> str:
        return f"max_position_embeddings={self.max_position_embeddings}, hidden_size={self.hidden_size}"

"""Token embeddings: the table that turns token ids into vectors (GPT-2's ``wte``, Llama's ``embed_tokens``).

Row ``v`` of the (vocab_size, hidden_size) table is the vector of token ``v``::

    ids (B, T) --ops.embedding--> (B, T, hidden_size)

The lookup runs through ``ops.embedding``: its backward adds each token's gradient
into that token's row, so only the rows of tokens in the batch change in a step.
Many models reuse this table as the output layer (*tied* embeddings): the logits
are ``h @ weight.T``, one score per vocabulary entry.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.checks import positive_int


class TokenEmbedding(nn.Module):
    """``TokenEmbedding(vocab_size, hidden_size)``: ids (...) int -> (..., hidden_size).

    The parameter is ``weight`` (vocab_size, hidden_size), as in ``nn.Embedding``, so a
    model that names this module ``wte`` or ``embed_tokens`` has Hugging Face's
    state-dict keys. Initialised from N(0, 0.02), GPT-2's ``initializer_range``.
    """

    def __init__(self, vocab_size: int, hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.vocab_size = positive_int("TokenEmbedding", "vocab_size", vocab_size)
        self.hidden_size = positive_int("TokenEmbedding", "hidden_size", hidden_size)
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, device=device, dtype=dtype))  # (V, C)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return ops.embedding(ids, self.weight)  # (..., C)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, hidden_size={self.hidden_size}"

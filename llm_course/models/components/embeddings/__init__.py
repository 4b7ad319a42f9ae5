"""Embeddings: token ids to vectors (``TokenEmbedding``), learned absolute positions (GPT-2) and rotary (Llama, Qwen2)."""

from llm_course.models.components.embeddings.learned import LearnedPositionalEmbedding
from llm_course.models.components.embeddings.rotary import (
    RotaryEmbedding,
    apply_rope_interleaved,
    deinterleave,
    interleave,
    rope_frequencies,
)
from llm_course.models.components.embeddings.token import TokenEmbedding

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "TokenEmbedding",
    "apply_rope_interleaved",
    "deinterleave",
    "interleave",
    "rope_frequencies",
]

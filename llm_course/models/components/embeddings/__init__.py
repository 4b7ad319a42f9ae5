"""Position embeddings: learned absolute (GPT-2) and rotary (Llama, Qwen2)."""

from llm_course.models.components.embeddings.learned import LearnedPositionalEmbedding
from llm_course.models.components.embeddings.rotary import RotaryEmbedding, rope_frequencies

__all__ = ["LearnedPositionalEmbedding", "RotaryEmbedding", "rope_frequencies"]

"""Building blocks of the models: layers that call ``llm_course.ops``."""

from llm_course.models.components.linear import Linear
from llm_course.models.components.norms import LayerNorm, RMSNorm
from llm_course.models.components.attention import GroupedQueryAttention, MultiHeadAttention
from llm_course.models.components.embeddings import LearnedPositionalEmbedding, RotaryEmbedding
from llm_course.models.components.mlp import MLP, GatedMLP

__all__ = [
    "Linear",
    "LayerNorm",
    "RMSNorm",
    "MultiHeadAttention",
    "GroupedQueryAttention",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "MLP",
    "GatedMLP",
]

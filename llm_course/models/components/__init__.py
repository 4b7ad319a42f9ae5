"""Building blocks of the models: layers that call ``llm_course.ops``.

Their arguments carry the names of Hugging Face configs (``hidden_size``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
``attention_dropout``, ``max_position_embeddings``, ``rope_theta``, ``rope_scaling``, ...)
and their parameters the names of Hugging Face checkpoints, so a model passes its
config's values straight through and loads weights by name.
"""

from llm_course.models.components.linear import Linear
from llm_course.models.components.norms import LayerNorm, RMSNorm
from llm_course.models.components.attention import GroupedQueryAttention, MultiHeadAttention
from llm_course.models.components.embeddings import LearnedPositionalEmbedding, RotaryEmbedding, TokenEmbedding
from llm_course.models.components.mlp import MLP, GatedMLP

__all__ = [
    "Linear",
    "LayerNorm",
    "RMSNorm",
    "MultiHeadAttention",
    "GroupedQueryAttention",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "TokenEmbedding",
    "MLP",
    "GatedMLP",
]

"""Attention layers: GPT-2's multi-head attention, and grouped-query attention with RoPE (Qwen2, Llama)."""

from llm_course.models.components.attention.grouped_query import GroupedQueryAttention
from llm_course.models.components.attention.multi_head import MultiHeadAttention

__all__ = ["GroupedQueryAttention", "MultiHeadAttention"]

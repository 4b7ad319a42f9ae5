"""Bad arguments to the components fail where they are written, with an error naming the component,
the argument and the value (not a NaN table, a truncated head or a crash inside a reshape)."""

from __future__ import annotations

import pytest
import torch

from llm_course.models.components import (
    MLP,
    GatedMLP,
    GroupedQueryAttention,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
    TokenEmbedding,
)
from llm_course.models.components.embeddings import rope_frequencies

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip

CASES = [
    # attention: head counts and sizes
    (lambda: MultiHeadAttention(48, 0), r"MultiHeadAttention: num_attention_heads=0 must be a positive integer"),
    (lambda: MultiHeadAttention(48, -2), r"MultiHeadAttention: num_attention_heads=-2"),
    (lambda: MultiHeadAttention(48, 4.0), r"MultiHeadAttention: num_attention_heads=4\.0 must be a positive integer"),
    (lambda: MultiHeadAttention(0, 4), r"MultiHeadAttention: hidden_size=0"),
    (lambda: MultiHeadAttention(50, 4), r"MultiHeadAttention: hidden_size=50 does not divide evenly into num_attention_heads=4"),
    (lambda: MultiHeadAttention(48, 4, attention_dropout=1.5), r"MultiHeadAttention: attention_dropout=1\.5 must be a probability"),
    (lambda: MultiHeadAttention(48, 4, resid_dropout=-0.1), r"MultiHeadAttention: resid_dropout=-0\.1"),
    (lambda: GroupedQueryAttention(48, 0, 1), r"GroupedQueryAttention: num_attention_heads=0 must be a positive integer"),
    (lambda: GroupedQueryAttention(48, 6, 0), r"GroupedQueryAttention: num_key_value_heads=0 must be a positive integer"),
    (lambda: GroupedQueryAttention(48, 6, 4), r"GroupedQueryAttention: num_key_value_heads=4 does not divide num_attention_heads=6"),
    (lambda: GroupedQueryAttention(50, 6, 2), r"GroupedQueryAttention: head_dim is not given and hidden_size=50 does not divide evenly"),
    (lambda: GroupedQueryAttention(48, 6, 2, head_dim=0), r"GroupedQueryAttention: head_dim=0 must be a positive integer"),
    (lambda: GroupedQueryAttention(48, 6, 2, head_dim=7), r"GroupedQueryAttention: head_dim=7 must be even"),
    (lambda: GroupedQueryAttention(48, 6, 2, sliding_window=0), r"GroupedQueryAttention: sliding_window=0"),
    (lambda: GroupedQueryAttention(48, 6, 2, attention_dropout=2), r"GroupedQueryAttention: attention_dropout=2"),
    (lambda: GroupedQueryAttention(48, 6, 2, rotary=RotaryEmbedding(16, 8)), r"GroupedQueryAttention: the shared rotary has head_dim=16"),
    # rotary tables: nothing that gives NaN or meaningless angles
    (lambda: GroupedQueryAttention(48, 6, 2, rope_theta=0), r"GroupedQueryAttention: rope_theta=0 must be a finite number > 1"),
    (lambda: RotaryEmbedding(16, 8, rope_theta=0.0), r"RotaryEmbedding: rope_theta=0\.0 must be a finite number > 1"),
    (lambda: RotaryEmbedding(16, 8, rope_theta=1), r"RotaryEmbedding: rope_theta=1 must be"),
    (lambda: RotaryEmbedding(16, 8, rope_theta=float("nan")), r"RotaryEmbedding: rope_theta=nan"),
    (lambda: RotaryEmbedding(16, 8, rope_theta=None), r"RotaryEmbedding: rope_theta=None"),
    (lambda: RotaryEmbedding(16, 8, rope_scaling={"rope_type": "linear", "factor": 0}),
     r"RotaryEmbedding: rope_scaling\['factor'\]=0 must be a finite number > 0"),
    (lambda: RotaryEmbedding(16, 8, rope_scaling={"rope_type": "dynamic", "factor": -2.0}), r"rope_scaling\['factor'\]=-2\.0"),
    (lambda: RotaryEmbedding(16, 8, rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}),
     r"RotaryEmbedding: rope_scaling\['original_max_position_embeddings'\]=0"),
    (lambda: RotaryEmbedding(16, 8, rope_scaling=LLAMA3), r"RotaryEmbedding: rope_scaling\['high_freq_factor'\]=4 must be greater"),
    (lambda: RotaryEmbedding(16, 8, rope_scaling={"type": "su", "factor": 2.0}), r"RotaryEmbedding: rope scaling 'su' is not supported"),
    (lambda: RotaryEmbedding(15, 8), r"RotaryEmbedding: head_dim=15 must be even"),
    (lambda: RotaryEmbedding(0, 8), r"RotaryEmbedding: head_dim=0 must be a positive integer"),
    (lambda: RotaryEmbedding(16, 0), r"RotaryEmbedding: max_position_embeddings=0"),
    (lambda: rope_frequencies(16, 0), r"rope_frequencies: rope_theta=0"),
    # norms, MLPs, tables
    (lambda: RMSNorm(8, eps=None), r"RMSNorm: eps=None must be a finite number >= 0"),
    (lambda: RMSNorm(8, eps=-1e-6), r"RMSNorm: eps=-1e-06"),
    (lambda: RMSNorm(0), r"RMSNorm: hidden_size=0"),
    (lambda: LayerNorm(8, eps=None), r"LayerNorm: eps=None must be a finite number >= 0"),
    (lambda: LayerNorm(8, eps=float("inf")), r"LayerNorm: eps=inf"),
    (lambda: MLP(0), r"MLP: hidden_size=0"),
    (lambda: MLP(8, intermediate_size=0), r"MLP: intermediate_size=0"),
    (lambda: MLP(8, resid_dropout=1.1), r"MLP: resid_dropout=1\.1"),
    (lambda: GatedMLP(8, 0), r"GatedMLP: intermediate_size=0"),
    (lambda: Linear(-1, 4), r"Linear: in_features=-1 must be a non-negative integer"),
    (lambda: TokenEmbedding(0, 8), r"TokenEmbedding: vocab_size=0"),
    (lambda: LearnedPositionalEmbedding(16, 0), r"LearnedPositionalEmbedding: hidden_size=0"),
]  # fmt: skip


@pytest.mark.parametrize("make, match", CASES)
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_scaling_must_be_a_dict():
    with pytest.raises(TypeError, match="RotaryEmbedding: rope_scaling must be a dict or None, got str"):
        RotaryEmbedding(16, 8, rope_scaling="linear")


@pytest.mark.parametrize("make", [lambda: MultiHeadAttention(48, 4), lambda: GroupedQueryAttention(48, 6, 2)])
def test_attention_input_must_be_batched_and_of_the_right_width(make):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}: x must be \(B, T, hidden_size=48\), got shape \(7, 48\).*unsqueeze\(0\)"):
        layer(torch.randn(7, 48))
    with pytest.raises(ValueError, match=rf"{name}: x must be \(B, T, hidden_size=48\), got shape \(2, 7, 40\)"):
        layer(torch.randn(2, 7, 40))
    with pytest.raises(TypeError, match=rf"{name}: x must be a torch.Tensor"):
        layer([[0.0] * 48])


def test_no_head_is_truncated():
    """The configurations that used to truncate a head silently are refused; an explicit head_dim is honoured."""
    with pytest.raises(ValueError, match="does not divide evenly"):
        GroupedQueryAttention(50, 6, 2)
    layer = GroupedQueryAttention(50, 5, 1, head_dim=12)
    assert layer.q_proj.out_features == 5 * 12 and layer(torch.randn(1, 3, 50)).shape == (1, 3, 50)


def test_good_edge_values_are_accepted():
    assert RMSNorm(4, eps=0).eps == 0.0  # eps = 0 is a valid (if risky) choice
    assert Linear(0, 3)(torch.randn(2, 0)).shape == (2, 3)
    assert MultiHeadAttention(8, 8).head_dim == 1
    assert GroupedQueryAttention(16, 4).num_key_value_heads == 4  # default: one kv head per query head, as in HF

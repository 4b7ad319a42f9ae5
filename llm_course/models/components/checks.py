"""Argument checks for the components, so that a bad configuration fails where it is written.

A head count of 0, an ``eps`` of None or a head size that does not divide the width
would otherwise surface far away (a division by zero inside a reshape, NaN in the
output) or not at all (a silently truncated head). Each check raises an error that
names the component, the argument and the value it got::

    GroupedQueryAttention: num_attention_heads=0 must be a positive integer
"""

from __future__ import annotations

import math
import numbers

import torch


def positive_int(component: str, name: str, value, *, allow_zero: bool = False) -> int:
    """``value`` as an int, which must be >= 1 (>= 0 with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{component}: {name}={value!r} must be {kind} integer")
    return int(value)


def non_negative_float(component: str, name: str, value) -> float:
    """``value`` as a float, which must be a finite number >= 0 (an ``eps``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{component}: {name}={value!r} must be a finite number >= 0")
    return float(value)


def probability(component: str, name: str, value) -> float:
    """``value`` as a float in [0, 1] (a dropout rate)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{component}: {name}={value!r} must be a probability in [0, 1]")
    return float(value)


def check_hidden_states(component: str, x: torch.Tensor, hidden_size: int) -> None:
    """x must be (B, T, hidden_size): a batch of sequences of token vectors."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{component}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != hidden_size:
        hint = "; for one sequence, add the batch dimension with x.unsqueeze(0)" if x.dim() == 2 else ""
        raise ValueError(
            f"{component}: x must be (B, T, hidden_size={hidden_size}), got shape {tuple(x.shape)}{hint}"
        )

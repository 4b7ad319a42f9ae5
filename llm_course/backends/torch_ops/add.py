"""Elementwise add: the reference for the first Triton kernel.

``z = x + y`` reads two tensors and writes one, one addition per element: the
simplest op there is, and on a GPU it runs exactly as fast as memory allows.
"""

from __future__ import annotations

import torch


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` for two tensors of the same shape. (...) + (...) -> (...)."""
    if x.shape != y.shape:
        raise ValueError(f"add: x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; they must match")
    return x + y

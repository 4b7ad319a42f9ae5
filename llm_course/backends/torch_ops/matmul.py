"""Matrix multiply and linear layer: the PyTorch references.

``matmul`` is the product of two matrices; ``linear`` is what ``nn.Linear``
computes, ``x @ weight.T + bias``, with the weight stored the Hugging Face (and
``nn.Linear``) way: one row per output feature, ``weight`` of shape (N, K).

The Triton versions (``llm_course/backends/triton_ops/matmul.py`` and
``linear.py``) compute the same thing tile by tile and are tested against these.
"""

from __future__ import annotations

import torch


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The matrix product ``a @ b``.

    a: (M, K), b: (K, N) -> (M, N), same dtype as the inputs.

    Every output element is a dot product of a row of ``a`` with a column of ``b``:
    ``c[m, n] = sum_k a[m, k] * b[k, n]``, which is ``2 * M * N * K`` FLOPs in all.
    """
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"matmul: expected two matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    return a @ b  # (M, N)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``, as ``nn.Linear`` computes it.

    x: (..., K), weight: (N, K), bias: (N,) or None -> (..., N).

    The backward pass, which autograd derives here, is three more products
    (with dy of shape (..., N)):

    * dx = dy @ weight                    (..., N) @ (N, K) -> (..., K)
    * dweight = dy^T @ x                  (N, M) @ (M, K)   -> (N, K), M = all leading dims flattened
    * dbias = dy summed over all rows     -> (N,)
    """
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x has {x.shape[-1]} features but weight expects {weight.shape[1]} (weight {tuple(weight.shape)})")
    # x @ weight.T + bias in one call: on a GPU, one cuBLAS product that adds the bias in its
    # epilogue, as it writes y (written as ``y = x @ weight.T; y = y + bias`` it would be a second
    # kernel that reads and writes all of y again).
    return torch.nn.functional.linear(x, weight, bias)  # (..., K) @ (K, N) + (N,) -> (..., N)

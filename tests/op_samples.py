"""Small valid arguments for every declared op, for tests that run each op once on each backend.

``SAMPLES[name](device)`` returns ``(args, kwargs)`` for ``llm_course.ops.<name>``: tiny
float32 tensors (the Triton interpreter is slow, and gives zeros for bfloat16). A new
op needs an entry here: the tests that use this table check that it covers every op.
"""

from __future__ import annotations

import torch


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed))


def _rope_tables(T: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.arange(T).float()[:, None] * torch.rand(D // 2, generator=_g(3))[None, :]  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


SAMPLES = {
    "add": lambda dev: ((_randn(3, 40).to(dev), _randn(3, 40, seed=1).to(dev)), {}),
    "softmax": lambda dev: ((_randn(3, 40).to(dev),), {}),
    "rms_norm": lambda dev: ((_randn(3, 40).to(dev), _randn(40, seed=1).to(dev)), {}),
    "layer_norm": lambda dev: ((_randn(3, 40).to(dev), _randn(40, seed=1).to(dev), _randn(40, seed=2).to(dev)), {}),
    "add_layer_norm": lambda dev: ((_randn(3, 40).to(dev), _randn(3, 40, seed=3).to(dev), _randn(40, seed=1).to(dev),
                                    _randn(40, seed=2).to(dev)), {}),
    "add_rms_norm": lambda dev: ((_randn(3, 40).to(dev), _randn(3, 40, seed=3).to(dev), _randn(40, seed=1).to(dev)), {}),
    "matmul": lambda dev: ((_randn(8, 16).to(dev), _randn(16, 8, seed=1).to(dev)), {}),
    "linear": lambda dev: ((_randn(2, 4, 16).to(dev), _randn(8, 16, seed=1).to(dev), _randn(8, seed=2).to(dev)), {}),
    "apply_rope": lambda dev: ((_randn(1, 2, 5, 16).to(dev), *(t.to(dev) for t in _rope_tables(5, 16))), {}),
    "attention": lambda dev: (
        (_randn(1, 2, 16, 16).to(dev), _randn(1, 2, 16, 16, seed=1).to(dev), _randn(1, 2, 16, 16, seed=2).to(dev)),
        {"causal": True},
    ),
    "qkv_attention": lambda dev: ((_randn(2, 13, 96).to(dev), 2), {"causal": True}),  # C = 32: 2 heads of 16
    "decode_attention": lambda dev: (
        (_randn(2, 4, 1, 16).to(dev), _randn(2, 2, 24, 16, seed=1).to(dev), _randn(2, 2, 24, 16, seed=2).to(dev),
         torch.tensor([19, 7], dtype=torch.int32).to(dev)),
        {},
    ),
    "embedding": lambda dev: ((torch.tensor([[0, 3, 3], [9, 1, 0]]).to(dev), _randn(10, 24).to(dev)), {}),
    "gelu_tanh": lambda dev: ((_randn(3, 40).to(dev),), {}),
    "silu_mul": lambda dev: ((_randn(3, 40).to(dev), _randn(3, 40, seed=1).to(dev)), {}),
    "cross_entropy": lambda dev: ((_randn(5, 37).to(dev), torch.tensor([3, -100, 0, 36, 7]).to(dev)), {}),
    "fused_linear_cross_entropy": lambda dev: (
        (_randn(5, 16).to(dev), _randn(37, 16, seed=1).to(dev), torch.tensor([3, -100, 0, 36, 7]).to(dev),
         _randn(37, seed=2).to(dev)),
        {},
    ),
}

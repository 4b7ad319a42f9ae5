"""``ops.qkv_attention``: attention straight from GPT-2's packed (B, T, 3C) projection.

Both backends against a float64 computation of split, attention, merge, forward and the
gradient of the packed input; causal and not, with and without a padding mask, T = 37
(not a power of two), H = 3 heads of 16. The Triton backward writes dq, dk and dv into one
tensor: no concatenation anywhere in it. And GPT-2's attention layer gives the same numbers
through it as through the split path it replaces (the path a KV cache takes).

Tolerances: float32 1e-5 (output) and 1e-4 (gradient), float16 2e-3 and 1e-2; bfloat16 on a
GPU only (the interpreter gives zeros), against PyTorch's SDPA, 2e-2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.device import get_device
from llm_course.models.components.attention import MultiHeadAttention

H, D = 3, 16
TOL = {torch.float32: (dict(atol=1e-5, rtol=1e-5), dict(atol=1e-4, rtol=1e-4)),
       torch.float16: (dict(atol=2e-3, rtol=2e-3), dict(atol=1e-2, rtol=1e-2))}  # fmt: skip


def _reference(qkv, dy, causal, mask):
    """float64 split -> softmax(q k^T / sqrt(D) + mask) v -> merge, and d(<y, dy>)/d qkv."""
    x = qkv.detach().double().requires_grad_()
    B, T, _ = x.shape
    q, k, v = x.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
    scores = q @ k.transpose(-1, -2) / D**0.5  # (B, H, T, T)
    keep = torch.ones(T, T, dtype=torch.bool, device=x.device)
    if causal:
        keep = keep.tril()
    keep = keep.view(1, 1, T, T) if mask is None else keep & mask.view(B, 1, 1, T)
    p = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
    y = (p @ v).transpose(1, 2).reshape(B, T, H * D)
    (g,) = torch.autograd.grad((y * dy.double()).sum(), x)
    return y, g


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("causal, padded", [(True, False), (False, False), (True, True)])
def test_forward_and_packed_gradient(backend, dtype, causal, padded):
    rng = torch.Generator().manual_seed(0)
    dev = get_device()
    B, T = 2, 37
    qkv = torch.randn(B, T, 3 * H * D, generator=rng).to(dev, dtype).requires_grad_()
    dy = torch.randn(B, T, H * D, generator=rng).to(dev, dtype)
    mask = None
    if padded:  # the second sequence's first 5 tokens are padding
        mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        mask[1, :5] = False
    with use_backend(backend):
        y = ops.qkv_attention(qkv, H, causal=causal, key_padding_mask=mask)
        (g,) = torch.autograd.grad(y, qkv, dy)
    y_ref, g_ref = _reference(qkv, dy, causal, mask)
    tol_y, tol_g = TOL[dtype]
    assert y.shape == (B, T, H * D) and y.dtype == dtype and g.shape == qkv.shape
    torch.testing.assert_close(y.double(), y_ref, **tol_y)
    torch.testing.assert_close(g.double(), g_ref, **tol_g)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def test_the_triton_backward_writes_one_packed_gradient_with_no_concatenation():
    """The point of the op: through ops.attention, autograd's split concatenates dq, dk and dv
    (the check below sees that cat); here the kernels write them into the three parts of one
    tensor, and no cat or stack runs in the backward."""
    qkv = torch.randn(2, 20, 3 * H * D, device=get_device()).requires_grad_()

    def backward_ops(packed: bool) -> set[str]:
        with use_backend("triton"):
            if packed:
                y = ops.qkv_attention(qkv, H)
            else:
                q, k, v = (t.unflatten(-1, (H, D)).transpose(1, 2) for t in qkv.split(H * D, dim=-1))
                y = ops.attention(q, k, v)
        with _Ops() as seen:
            (g,) = torch.autograd.grad(y, qkv, torch.ones_like(y))
        assert g.is_contiguous() and g.shape == qkv.shape
        return set(seen.names)

    assert "cat" in backward_ops(packed=False)
    assert not {"cat", "stack"} & backward_ops(packed=True)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gpt2_attention_is_the_same_through_the_packed_op_and_the_split_path(backend):
    """Without a cache GPT-2's layer calls qkv_attention; asking for the cache (use_cache=True) takes
    the split path with ops.attention: the same numbers, and the same gradients of c_attn."""
    torch.manual_seed(0)
    layer = MultiHeadAttention(H * D, H).to(get_device())
    x = torch.randn(2, 11, H * D, device=get_device())
    grads = []
    for use_cache in (False, True):
        layer.zero_grad(set_to_none=True)
        with use_backend(backend):
            out = layer(x, use_cache=use_cache)
            out = out[0] if use_cache else out
            out.square().sum().backward()
        grads.append((out.detach(), layer.c_attn.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1024, 777])
def test_gpu_bf16_matches_sdpa(T):
    if get_device().type != "cuda":
        pytest.skip("needs a CUDA GPU")
    rng = torch.Generator().manual_seed(0)
    B, Hg, Dg = 4, 12, 64
    qkv = torch.randn(B, T, 3 * Hg * Dg, generator=rng).cuda().bfloat16().requires_grad_()
    dy = torch.randn(B, T, Hg * Dg, generator=rng).cuda().bfloat16()
    with use_backend("triton"):
        y = ops.qkv_attention(qkv, Hg)
        (g,) = torch.autograd.grad(y, qkv, dy)
    x = qkv.detach().float().requires_grad_()
    q, k, v = x.view(B, T, 3, Hg, Dg).permute(2, 0, 3, 1, 4)
    y_ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, Hg * Dg)
    (g_ref,) = torch.autograd.grad(y_ref, x, dy.float())
    torch.testing.assert_close(y.float(), y_ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(g.float(), g_ref, atol=2e-2, rtol=2e-2)

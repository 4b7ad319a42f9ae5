"""Embedding lookup: the torch reference and the Triton kernel (llm_course/backends/*/embedding.py).

Forward against plain indexing in float64, the gradient of the table against a
float64 scatter-add written here as a loop over tokens; ids repeat on purpose (a
row looked up twice gets both gradients). Tolerances: float32 1e-5, float16 2e-3,
bfloat16 2e-2 (GPU only). Widths are not powers of two, and one is wider than a
column block, so masks and several column blocks are exercised.
"""

from __future__ import annotations

import pytest
import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.backends.torch_ops import embedding as ref
from llm_course.device import get_device
from llm_course.grading.checks import assert_close

BACKENDS = ["torch", "triton"]


def _triton():
    from llm_course.backends.triton_ops import embedding

    return embedding


def _impl(backend):
    return (_triton() if backend == "triton" else ref).embedding


def scatter_add64(dout, ids, V):
    """dweight[v] = sum of dout[t] over tokens t with ids[t] == v, one token at a time, in float64."""
    C = dout.shape[-1]
    dw = torch.zeros(V, C, dtype=torch.float64)
    for t, v in enumerate(ids.reshape(-1).tolist()):
        dw[v] += dout.reshape(-1, C)[t].double().cpu()
    return dw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("V,C,ids_shape", [(11, 7, (2, 9)), (50, 1100, (13,)), (3, 48, (1, 1)), (257, 96, (3, 4, 5))])
def test_forward_and_gradient(rng, backend, dtype, V, C, ids_shape):
    dev = get_device()
    weight = torch.randn(V, C, generator=rng).to(dev, dtype).requires_grad_()
    ids = torch.randint(0, V, ids_shape, generator=rng).to(dev)
    ids.view(-1)[-1] = ids.view(-1)[0]  # at least one row looked up twice
    out = _impl(backend)(ids, weight)
    assert out.shape == (*ids_shape, C) and out.dtype == dtype
    assert_close(out, weight.detach().double()[ids], hint=f"{backend} embedding forward picks the wrong rows")
    dout = torch.randn(out.shape, generator=rng).to(dev, dtype)
    (dw,) = torch.autograd.grad(out, weight, dout)
    assert dw.dtype == dtype
    assert_close(dw, scatter_add64(dout, ids, V), hint=f"{backend} embedding backward: each row gets the sum of its tokens' gradients", what="dweight")


def test_written_out_backward(rng):
    V, C = 9, 5
    ids = torch.tensor([[1, 4, 1], [8, 1, 0]])
    dout = torch.randn(2, 3, C, generator=rng, dtype=torch.float64)
    assert_close(ref.embedding_backward(dout, ids, V), scatter_add64(dout, ids, V), hint="the written-out scatter-add is off")


@pytest.mark.parametrize("backend", BACKENDS)
def test_through_the_backend_switch_int32_and_strided(rng, backend):
    dev = get_device()
    weight = torch.randn(20, 10, generator=rng).to(dev)
    table = torch.randn(10, 40, generator=rng).to(dev)[:, ::2].contiguous().T  # (20, 10), not contiguous
    ids = torch.randint(0, 20, (3, 4), generator=rng, dtype=torch.int32).to(dev)
    with use_backend(backend):
        assert_close(ops.embedding(ids, weight), weight.double()[ids.long()], hint=f"ops.embedding under {backend}")
        assert_close(ops.embedding(ids, table), table.double()[ids.long()], hint=f"ops.embedding of a transposed table under {backend}")
        empty = ops.embedding(torch.zeros(0, 3, dtype=torch.long, device=dev), weight)
    assert empty.shape == (0, 3, 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "ids, error, match",
    [
        (torch.tensor([0, 5]), IndexError, r"embedding: id 5 is outside the table's rows 0 \.\. 4"),
        (torch.tensor([-1, 2]), IndexError, r"embedding: id -1 is outside"),
        (torch.tensor([0.0, 1.0]), TypeError, "embedding: ids must be int64 or int32, got float32"),
        ([0, 1], TypeError, "embedding: ids must be a torch.Tensor"),
    ],
)
def test_errors_name_the_op(backend, ids, error, match):
    dev = get_device()
    weight = torch.randn(5, 3, device=dev)
    ids = ids.to(dev) if isinstance(ids, torch.Tensor) else ids
    with pytest.raises(error, match=match):
        _impl(backend)(ids, weight)


def test_kernel_refuses_float64_tables():
    with pytest.raises(TypeError, match="embedding: weight has dtype float64"):
        _triton().embedding(torch.tensor([0], device=get_device()), torch.randn(5, 3, dtype=torch.float64, device=get_device()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_real_sizes(dtype):
    dev = get_device()
    V, C = 151_936, 896  # Qwen2-0.5B's table
    weight = torch.randn(V, C, device=dev, dtype=dtype).requires_grad_()
    ids = torch.randint(0, 1000, (4, 2047), device=dev)  # a small range: many repeats
    out = _triton().embedding(ids, weight)
    assert torch.equal(out, weight.detach()[ids])
    dout = torch.randn_like(out)
    (dw,) = torch.autograd.grad(out, weight, dout)
    assert_close(dw, ref.embedding_backward(dout.double(), ids, V), hint="the GPU scatter-add is off", what="dweight")

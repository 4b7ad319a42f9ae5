"""Softmax over the last dim: the torch reference and the Triton kernels (llm_course/backends/*/softmax.py).

Forward and backward against float64 ``torch.softmax`` and autograd on fresh
random inputs: non-power-of-two rows, leading dims, logits of +-1e4, rows of one
element, rows of -inf, rows longer than one block (the looped, online-softmax
kernels, also forced on short rows with a small ``max_fused_size``), sliced and
expanded (stride-0) inputs. Tolerances (``checks.TOLERANCES``): float32 1e-5,
float16 2e-3, bfloat16 2e-2 (GPU only). Dtypes taken: float32, float16,
bfloat16; float64 and integers are refused with an error naming the op.
"""

from __future__ import annotations

import pytest
import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close

SHAPES = [(3, 7, 33), (5, 1000), (4, 1), (2, 129), (16,)]
CPU_DTYPES = [torch.float32, torch.float16]


def _rand(rng, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=rng) * scale).to(dtype).to(get_device())


def _kernels():
    from llm_course.backends.triton_ops import softmax

    return softmax


def _reference(x, dy=None):
    """float64 softmax of x, and dx for the gradient dy when given."""
    x64 = x.detach().double().requires_grad_()
    y = torch.softmax(x64, dim=-1)
    if dy is None:
        return y.detach()
    y.backward(dy.double())
    return y.detach(), x64.grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_forward_and_backward(rng, backend, dtype, shape):
    x = _rand(rng, *shape, dtype=dtype, scale=3.0).requires_grad_()
    dy = _rand(rng, *shape, dtype=dtype)
    with use_backend(backend):
        y = ops.softmax(x)
    y.backward(dy)
    y_ref, dx_ref = _reference(x, dy)
    assert y.dtype == dtype and x.grad.dtype == dtype
    assert_close(y, y_ref, hint=f"{backend} softmax forward")
    assert_close(x.grad, dx_ref, hint=f"{backend} softmax backward", what="x.grad")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_softmax_extreme_logits(rng, backend):
    x = _rand(rng, 6, 77, scale=1e4)  # +-1e4: exp overflows without the max subtraction
    x[0] = 1e4  # a constant row
    x[1, :40] = -float("inf")  # some -inf, as masks produce
    with use_backend(backend):
        y = ops.softmax(x)
    assert_close(y, _reference(x), hint=f"{backend} softmax of +-1e4 and -inf")


def test_looped_kernels_on_short_rows(rng):
    max_fused_size = 128  # rows of 1000: 8 blocks of 128
    k = _kernels()
    x = _rand(rng, 4, 1000, scale=5.0)
    dy = _rand(rng, 4, 1000)
    y_ref, dx_ref = _reference(x, dy)
    y = k.softmax_forward(x, max_fused_size=max_fused_size)
    assert_close(y, y_ref, hint="looped softmax forward")
    assert_close(k.softmax_backward(y, dy, max_fused_size=max_fused_size), dx_ref, hint="looped softmax backward")
    x[2, :500] = -float("inf")  # whole first blocks of -inf: the running max starts at -inf
    x[3] = torch.linspace(-1e4, 1e4, 1000)  # the max arrives in the last block: rescaling matters
    assert_close(k.softmax_forward(x, max_fused_size=max_fused_size), _reference(x), hint="looped softmax, -inf blocks")


def test_long_row_uses_the_looped_kernel(rng):
    k = _kernels()
    n = 70_000  # longer than MAX_FUSED_SIZE
    assert triton_next_pow2(n) > k.MAX_FUSED_SIZE
    x = _rand(rng, 2, n, scale=10.0).requires_grad_()
    dy = _rand(rng, 2, n)
    y = k.softmax(x)
    y.backward(dy)
    y_ref, dx_ref = _reference(x, dy)
    assert_close(y, y_ref, hint="softmax of 70000-long rows")
    assert_close(x.grad, dx_ref, hint="softmax backward of 70000-long rows", what="x.grad")


def triton_next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def test_strided_and_expanded_inputs(rng):
    k = _kernels()
    wide = _rand(rng, 10, 50)
    x = wide[:, 5:38]  # rows 50 apart, 33 long: no copy needed
    assert_close(k.softmax(x), _reference(x), hint="softmax of sliced rows")
    xt = _rand(rng, 33, 10).T  # last-dim stride 10: copied first
    assert_close(k.softmax(xt), _reference(xt), hint="softmax of a transposed view")
    xg = _rand(rng, 4, 33).requires_grad_()
    k.softmax(xg).sum().backward()  # dy is an expanded tensor of ones (strides 0)
    assert_close(xg.grad, torch.zeros(4, 33, dtype=torch.float64), hint="d(sum softmax)/dx is 0", atol=1e-6)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.ones(4, 8, dtype=torch.int64), "softmax: x has dtype int64"),
        (torch.ones(4, 8, dtype=torch.float64), "softmax: x has dtype float64"),
        (torch.tensor(1.0), "softmax: x must have at least one dimension"),
    ],
)
@pytest.mark.parametrize("entry", ["softmax", "softmax_forward"])  # the entry point, and the public launcher
def test_softmax_errors_name_the_op(x, match, entry):
    with pytest.raises((TypeError, ValueError), match=match):
        getattr(_kernels(), entry)(x.to(get_device()))


@pytest.mark.skipif(has_gpu(), reason="the interpreter's bfloat16 trap exists only without a GPU")
def test_softmax_refuses_bfloat16_in_the_interpreter():
    with pytest.raises(TypeError, match="softmax: bfloat16 is not supported by the Triton interpreter"):
        _kernels().softmax(torch.ones(2, 8, dtype=torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 4096), (8192, 1000), (1024, 8192), (64, 16384), (8, 200_000)])
def test_softmax_gpu(dtype, shape):
    torch.manual_seed(0)
    x = (torch.randn(*shape, device=get_device()) * 4).to(dtype).requires_grad_()
    dy = torch.randn(*shape, device=get_device()).to(dtype)
    y = _kernels().softmax(x)
    y.backward(dy)
    y_ref, dx_ref = _reference(x, dy)
    assert_close(y, y_ref, hint=f"softmax {shape} {dtype} on the GPU")
    assert_close(x.grad, dx_ref, hint=f"softmax backward {shape} {dtype} on the GPU", what="x.grad")

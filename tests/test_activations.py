"""The MLP activations: GELU (tanh) and SiLU-times-gate (llm_course/backends/*/activations.py).

Both backends, forward and backward, against float64 references computed with
``torch.nn.functional`` (independent of the course's formulas): float32 1e-5,
float16 2e-3, bfloat16 2e-2 (GPU only). The Triton kernels run in the interpreter on
the CPU; shapes are not multiples of the block size, so the masked tail is exercised.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.backends.torch_ops import activations as ref
from llm_course.device import get_device
from llm_course.grading.checks import assert_close

SHAPES = [(1,), (1025,), (3, 7, 33), (2, 5, 1000)]
CPU_DTYPES = [torch.float32, torch.float16]
BACKENDS = ["torch", "triton"]


def _triton():
    from llm_course.backends.triton_ops import activations

    return activations


def _rand(rng, *shape, dtype=torch.float32, scale=3.0):
    """Values over about [-10, 10]: both tails of the sigmoid, not just the middle."""
    return (scale * torch.randn(*shape, generator=rng)).to(dtype).to(get_device())


def gelu64(x):
    return F.gelu(x.detach().double(), approximate="tanh")


def silu_mul64(g, u):
    return F.silu(g.detach().double()) * u.detach().double()


def _impl(backend, name):
    return getattr(_triton() if backend == "triton" else ref, name)


# --- GELU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_tanh_forward_backward(rng, backend, dtype, shape):
    x = _rand(rng, *shape, dtype=dtype).requires_grad_()
    y = _impl(backend, "gelu_tanh")(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, gelu64(x), hint=f"{backend} gelu_tanh forward is off")
    dy = _rand(rng, *shape, dtype=dtype, scale=1.0)
    (dx,) = torch.autograd.grad(y, x, dy)
    x64 = x.detach().double().requires_grad_()
    (dx64,) = torch.autograd.grad(F.gelu(x64, approximate="tanh"), x64, dy.double())
    assert_close(dx, dx64, hint=f"{backend} gelu_tanh backward is off", what="dx")


def test_gelu_tanh_written_out_backward(rng):
    """The formula the kernel implements, checked against autograd in float64."""
    x = _rand(rng, 4, 37, dtype=torch.float64).requires_grad_()
    dy = _rand(rng, 4, 37, dtype=torch.float64, scale=1.0)
    (dx,) = torch.autograd.grad(F.gelu(x, approximate="tanh"), x, dy)
    assert_close(ref.gelu_tanh_backward(dy, x.detach()), dx, hint="the written-out GELU derivative is off")


def test_gelu_tanh_is_not_exact_gelu(rng):
    """The tanh form differs from erf's GELU by up to about 5e-4: the test must see which one runs."""
    x = torch.linspace(-4, 4, 801, device=get_device())
    for backend in BACKENDS:
        y = _impl(backend, "gelu_tanh")(x)
        assert (y.double() - F.gelu(x.double())).abs().max() > 1e-4, f"{backend} gelu_tanh computes the erf GELU"


# --- SiLU * gate --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_silu_mul_forward_backward(rng, backend, dtype, shape):
    g = _rand(rng, *shape, dtype=dtype).requires_grad_()
    u = _rand(rng, *shape, dtype=dtype, scale=1.0).requires_grad_()
    y = _impl(backend, "silu_mul")(g, u)
    assert y.dtype == dtype and y.shape == g.shape
    assert_close(y, silu_mul64(g, u), hint=f"{backend} silu_mul forward is off")
    dy = _rand(rng, *shape, dtype=dtype, scale=1.0)
    dg, du = torch.autograd.grad(y, (g, u), dy)
    g64, u64 = g.detach().double().requires_grad_(), u.detach().double().requires_grad_()
    dg64, du64 = torch.autograd.grad(F.silu(g64) * u64, (g64, u64), dy.double())
    assert_close(dg, dg64, hint=f"{backend} silu_mul: the gradient of gate is off", what="dgate")
    assert_close(du, du64, hint=f"{backend} silu_mul: the gradient of up is off", what="dup")


def test_silu_mul_written_out_backward(rng):
    g = _rand(rng, 3, 41, dtype=torch.float64).requires_grad_()
    u = _rand(rng, 3, 41, dtype=torch.float64).requires_grad_()
    dy = _rand(rng, 3, 41, dtype=torch.float64, scale=1.0)
    dg, du = torch.autograd.grad(F.silu(g) * u, (g, u), dy)
    dg2, du2 = ref.silu_mul_backward(dy, g.detach(), u.detach())
    assert_close(dg2, dg, hint="the written-out dgate is off", what="dgate")
    assert_close(du2, du, hint="the written-out dup is off", what="dup")


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_inputs_stay_finite(backend):
    """Far in the tails the sigmoid is 0 or 1: no overflow, no NaN, forward or backward."""
    x = torch.tensor([-1e4, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0, 1e4], device=get_device()).requires_grad_()
    ones = torch.ones_like(x)
    y, z = _impl(backend, "gelu_tanh")(x), _impl(backend, "silu_mul")(x, ones)
    assert_close(y, gelu64(x), hint=f"{backend} gelu_tanh in the tails")
    assert_close(z, silu_mul64(x, ones), hint=f"{backend} silu_mul in the tails")
    (dx,) = torch.autograd.grad(y.sum() + z.sum(), x)
    x64 = x.detach().double().requires_grad_()
    (dx64,) = torch.autograd.grad(F.gelu(x64, approximate="tanh").sum() + F.silu(x64).sum(), x64)
    assert_close(dx, dx64, hint=f"{backend} gradients in the tails", what="dx")


# --- both ops: layouts, the backend switch, errors ---------------------------------------------------


def test_non_contiguous_and_empty(rng):
    K = _triton()
    x = _rand(rng, 40, 33).T  # (33, 40), a transposed view
    assert_close(K.gelu_tanh(x), gelu64(x), hint="gelu_tanh of a transposed view")
    g, u = _rand(rng, 20, 70)[:, ::2], _rand(rng, 35, 20).T  # strided and transposed, (20, 35) each
    assert_close(K.silu_mul(g, u), silu_mul64(g, u), hint="silu_mul of strided views")
    empty = torch.empty(0, 5, device=get_device(), requires_grad=True)
    assert K.gelu_tanh(empty).shape == (0, 5) and K.silu_mul(empty, empty).shape == (0, 5)
    K.silu_mul(empty, empty).sum().backward()
    assert empty.grad.shape == (0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_through_the_backend_switch(rng, backend):
    x, g, u = (_rand(rng, 2, 3, 50) for _ in range(3))
    with use_backend(backend):
        y, z = ops.gelu_tanh(x), ops.silu_mul(g, u)
    assert_close(y, gelu64(x), hint=f"ops.gelu_tanh under {backend} is off")
    assert_close(z, silu_mul64(g, u), hint=f"ops.silu_mul under {backend} is off")


def test_double_backward_is_refused(rng):
    """The backward kernels are not differentiable: asking for second derivatives must raise, not give zeros."""
    x = _rand(rng, 10).requires_grad_()
    (dx,) = torch.autograd.grad(_triton().gelu_tanh(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        dx.sum().backward()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda K, d: K.silu_mul(torch.ones(4, device=d), torch.ones(5, device=d)), ValueError,
         r"silu_mul: inputs must have the same shape, got gate \(4,\), up \(5,\)"),
        (lambda K, d: K.silu_mul(torch.ones(4, device=d), torch.ones(4, device=d, dtype=torch.float16)), TypeError,
         "silu_mul: inputs have different dtypes"),
        (lambda K, d: K.gelu_tanh(torch.ones(4, device=d, dtype=torch.float64)), TypeError, "gelu_tanh: x has dtype float64"),
        (lambda K, d: K.gelu_tanh(torch.ones(4, device=d, dtype=torch.int32)), TypeError, "gelu_tanh: x has dtype int32"),
        (lambda K, d: K.gelu_tanh([1.0]), TypeError, "gelu_tanh: x must be a torch.Tensor"),
    ],
)  # fmt: skip
def test_kernel_errors_name_the_op(call, error, match):
    with pytest.raises(error, match=match):
        call(_triton(), get_device())


def test_reference_shape_error():
    with pytest.raises(ValueError, match=r"silu_mul: gate has shape \(4,\) but up has shape \(5,\)"):
        ref.silu_mul(torch.ones(4), torch.ones(5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_real_sizes(rng, dtype):
    K = _triton()
    shape = (4, 2047, 5632)  # a SwiGLU intermediate of a 2048-wide model
    g = _rand(rng, *shape, dtype=dtype).requires_grad_()
    u = _rand(rng, *shape, dtype=dtype, scale=1.0).requires_grad_()
    y = K.silu_mul(g, u)
    assert_close(y, silu_mul64(g, u), hint="silu_mul on the GPU is off")
    dy = torch.randn_like(y)
    dg, du = torch.autograd.grad(y, (g, u), dy)
    dg64, du64 = ref.silu_mul_backward(dy.double(), g.detach().double(), u.detach().double())
    assert_close(dg, dg64, hint="silu_mul dgate on the GPU is off", what="dgate")
    assert_close(du, du64, hint="silu_mul dup on the GPU is off", what="dup")
    x = g.detach().requires_grad_()
    y = K.gelu_tanh(x)
    assert_close(y, gelu64(x), hint="gelu_tanh on the GPU is off")
    (dx,) = torch.autograd.grad(y, x, dy)
    assert_close(dx, ref.gelu_tanh_backward(dy.double(), x.detach().double()), hint="gelu_tanh backward on the GPU is off", what="dx")

"""The Triton matmul and linear against float64 references.

On the CPU the kernels run through the Triton interpreter, at small shapes that
are not multiples of the block size (32 there). Tolerances: float32 1e-5
(the interpreter sums in float32, as the GPU does with input_precision="ieee"),
float16 2e-3 (the output's rounding; the sum itself is float32).

On a GPU (tests marked ``gpu``) the kernels run compiled at real sizes, in
bf16, fp16 and fp32, and must be about as accurate as cuBLAS (``torch.matmul``)
on the same inputs: the error against a float64 product at most twice cuBLAS's.
"""

from __future__ import annotations

import pytest
import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.backends.torch_ops import matmul as torch_mm
from llm_course.backends.triton_ops import linear as tri_linear
from llm_course.backends.triton_ops import matmul as tri_mm
from llm_course.device import get_device, is_interpreter
from llm_course.grading.checks import assert_close
from llm_course.models.components import Linear

DEV = get_device()
SHAPES = [(33, 47, 29), (1, 1, 1), (65, 17, 130), (32, 32, 32), (5, 70, 64)]  # (M, N, K)


def _rand(rng, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=rng).to(dtype).to(DEV)


def _ref(a, b):
    return a.double().cpu() @ b.double().cpu()


# --- matmul ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_matches_float64(rng, shape, dtype):
    M, N, K = shape
    a, b = _rand(rng, M, K, dtype=dtype), _rand(rng, K, N, dtype=dtype)
    out = tri_mm.matmul(a, b)
    assert out.shape == (M, N) and out.dtype == dtype
    assert_close(out, _ref(a, b), hint=f"Triton matmul {shape} {dtype}")
    assert_close(torch_mm.matmul(a, b), _ref(a, b), hint=f"torch reference matmul {shape} {dtype}")


@pytest.mark.parametrize("layout", ["aT", "bT", "both", "padded", "broadcast"])
def test_matmul_any_strides(rng, layout):
    M, N, K = 37, 41, 53
    a = _rand(rng, K, M).T if layout in ("aT", "both") else _rand(rng, M, K)  # (M, K)
    b = _rand(rng, N, K).T if layout in ("bT", "both") else _rand(rng, K, N)  # (K, N)
    if layout == "padded":  # views inside larger tensors
        a = _rand(rng, M + 5, K + 7)[2 : 2 + M, 3 : 3 + K]
        b = _rand(rng, K + 4, N + 9)[1 : 1 + K, 5 : 5 + N]
    if layout == "broadcast":  # stride 0: one row repeated, as autograd hands out for y.sum()
        a = _rand(rng, 1, K).expand(M, K)
    assert_close(tri_mm.matmul(a, b), _ref(a, b), hint=f"matmul with layout {layout}")


def test_matmul_bias_epilogue(rng):
    M, N, K = 33, 47, 29
    a, b, bias = _rand(rng, M, K), _rand(rng, K, N), _rand(rng, N)
    out = tri_mm.launch_matmul(a, b, bias)
    assert_close(out, _ref(a, b) + bias.double().cpu(), hint="matmul with a bias epilogue")


def test_matmul_empty_dimensions(rng):
    assert tri_mm.matmul(_rand(rng, 0, 5), _rand(rng, 5, 3)).shape == (0, 3)
    out = tri_mm.matmul(_rand(rng, 4, 0), _rand(rng, 0, 3))
    assert out.shape == (4, 3) and (out == 0).all()
    bias = _rand(rng, 3)
    assert_close(tri_mm.launch_matmul(_rand(rng, 4, 0), _rand(rng, 0, 3), bias), bias.double().cpu().expand(4, 3), hint="K = 0 with bias")


def test_matmul_gradients(rng):
    M, N, K = 19, 23, 41
    a = _rand(rng, M, K).requires_grad_()
    b = _rand(rng, K, N).requires_grad_()
    g = _rand(rng, M, N)
    (tri_mm.matmul(a, b) * g).sum().backward()
    a64, b64 = a.detach().double().cpu().requires_grad_(), b.detach().double().cpu().requires_grad_()
    ((a64 @ b64) * g.double().cpu()).sum().backward()
    assert_close(a.grad, a64.grad, hint="d a of matmul")
    assert_close(b.grad, b64.grad, hint="d b of matmul")


def test_ops_matmul_dispatches_to_triton(rng):
    a, b = _rand(rng, 9, 13), _rand(rng, 13, 6)
    with use_backend("triton"):
        out = ops.matmul(a, b)
    assert_close(out, _ref(a, b), hint="ops.matmul under the triton backend")


def test_fp32_precision_follows_torch_setting():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert tri_mm.dot_input_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert tri_mm.dot_input_precision(torch.float32) == "tf32"
        assert tri_mm.dot_input_precision(torch.float16) == "tf32"  # unused for 16-bit inputs
    finally:
        torch.set_float32_matmul_precision(before)


# --- errors ---------------------------------------------------------------------------------


def test_matmul_errors_name_the_problem(rng):
    a = _rand(rng, 4, 5)
    with pytest.raises(ValueError, match="matmul: inner dimensions differ"):
        tri_mm.matmul(a, _rand(rng, 6, 3))
    with pytest.raises(ValueError, match="matmul: b must have 2 dimensions"):
        tri_mm.matmul(a, _rand(rng, 5))
    with pytest.raises(ValueError, match="matmul: a must have 2 dimensions"):
        tri_mm.matmul(_rand(rng, 2, 4, 5), _rand(rng, 5, 3))
    with pytest.raises(TypeError, match="matmul: a has dtype int32"):
        tri_mm.matmul(torch.ones(4, 5, dtype=torch.int32, device=DEV), _rand(rng, 5, 3))
    with pytest.raises(TypeError, match="matmul: inputs have different dtypes"):
        tri_mm.matmul(a, _rand(rng, 5, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"matmul: bias has shape \(4,\)"):
        tri_mm.launch_matmul(a, _rand(rng, 5, 3), _rand(rng, 4))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        torch_mm.matmul(a, _rand(rng, 6, 3))


@pytest.mark.skipif(not is_interpreter(), reason="bfloat16 is refused only by the Triton interpreter")
def test_bf16_refused_in_interpreter():
    a = torch.ones(4, 5, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16 is not supported by the Triton interpreter"):
        tri_mm.matmul(a, torch.ones(5, 3, dtype=torch.bfloat16))


def test_linear_errors_name_the_problem(rng):
    x, w = _rand(rng, 3, 8), _rand(rng, 6, 8)
    with pytest.raises(ValueError, match="linear: x has 7 features"):
        tri_linear.linear(_rand(rng, 3, 7), w)
    with pytest.raises(ValueError, match=r"linear: bias has shape \(5,\)"):
        tri_linear.linear(x, w, _rand(rng, 5))
    with pytest.raises(ValueError, match="linear: weight must have 2 dimensions"):
        tri_linear.linear(x, _rand(rng, 8))
    with pytest.raises(ValueError, match="linear: x has 7 features"):
        torch_mm.linear(_rand(rng, 3, 7), w)


# --- linear ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward(rng, dtype, with_bias):
    x, w = _rand(rng, 2, 5, 33, dtype=dtype), _rand(rng, 47, 33, dtype=dtype)  # (B, T, K), (N, K)
    bias = _rand(rng, 47, dtype=dtype) if with_bias else None
    expected = x.double().cpu() @ w.double().cpu().T + (bias.double().cpu() if with_bias else 0)
    out = tri_linear.linear(x, w, bias)
    assert out.shape == (2, 5, 47) and out.dtype == dtype
    assert_close(out, expected, hint="Triton linear forward")
    assert_close(torch_mm.linear(x, w, bias), expected, hint="torch reference linear")


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradients(rng, with_bias):
    x = _rand(rng, 3, 7, 29).requires_grad_()  # (B, T, K)
    w = _rand(rng, 45, 29).requires_grad_()  # (N, K)
    bias = _rand(rng, 45).requires_grad_() if with_bias else None
    dy = _rand(rng, 3, 7, 45)
    (tri_linear.linear(x, w, bias) * dy).sum().backward()

    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w) + ((bias,) if with_bias else ())]
    y64 = torch_mm.linear(leaves[0], leaves[1], leaves[2] if with_bias else None)
    (y64 * dy.double().cpu()).sum().backward()
    assert_close(x.grad, leaves[0].grad, hint="dx of linear")
    assert_close(w.grad, leaves[1].grad, hint="dweight of linear")
    if with_bias:
        assert_close(bias.grad, leaves[2].grad, hint="dbias of linear")


def test_linear_gradient_of_a_plain_sum(rng):
    """y.sum() hands back a broadcast dy with strides (0, 0): the kernel reads it in place."""
    x, w, b = _rand(rng, 9, 17).requires_grad_(), _rand(rng, 11, 17).requires_grad_(), _rand(rng, 11).requires_grad_()
    tri_linear.linear(x, w, b).sum().backward()
    assert_close(x.grad, w.detach().double().cpu().sum(0).expand(9, 17), hint="dx for y.sum()")
    assert_close(w.grad, x.detach().double().cpu().sum(0).expand(11, 17), hint="dweight for y.sum()")
    assert_close(b.grad, torch.full((11,), 9.0, dtype=torch.float64), hint="dbias for y.sum()")


def test_linear_module_is_nn_linear_compatible(rng):
    layer = Linear(29, 45).to(DEV)
    ref = torch.nn.Linear(29, 45).to(DEV)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    layer.load_state_dict(ref.state_dict())
    x = _rand(rng, 4, 29)
    expected = x.double().cpu() @ ref.weight.detach().double().cpu().T + ref.bias.detach().double().cpu()
    assert_close(layer(x), expected, hint="Linear with the torch backend")
    with use_backend("triton"):
        y = layer(x)
        y.sum().backward()
    assert_close(y, expected, hint="Linear with the triton backend")
    assert layer.weight.grad is not None and layer.bias.grad is not None
    assert Linear(5, 3, bias=False).bias is None


# --- GPU, real sizes ------------------------------------------------------------------------


def _no_worse_than_torch(ours, theirs, ref, what, factor=2.0):
    """Max error against float64 within ``factor`` times cuBLAS's, plus a slack for float32 outputs:
    a float32 sum of thousands of products in a different order than cuBLAS's (which may split K)
    differs by a few units of 1e-6 relative to the largest output."""
    ref = ref.double()
    err_ours = (ours.double() - ref).abs().max().item()
    err_torch = (theirs.double() - ref).abs().max().item()
    slack = (1e-5 if ours.dtype == torch.float32 else 1e-6) * ref.abs().max().item()
    assert err_ours <= factor * err_torch + slack, f"{what}: max error {err_ours:.3g}, cuBLAS {err_torch:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(2048, 2048, 2048), (2047, 1025, 3001)])
def test_matmul_gpu_as_accurate_as_cublas(shape, dtype):
    M, N, K = shape
    g = torch.Generator(device=DEV).manual_seed(0)
    a = torch.randn(M, K, device=DEV, generator=g).to(dtype)
    b = torch.randn(K, N, device=DEV, generator=g).to(dtype)
    ref = a.double() @ b.double()
    out = tri_mm.matmul(a, b)
    assert out.dtype == dtype
    _no_worse_than_torch(out, torch.matmul(a, b), ref, f"matmul {shape} {dtype}")
    _no_worse_than_torch(tri_mm.matmul(b.T, a.T), torch.matmul(b.T, a.T), ref.T, f"transposed matmul {shape} {dtype}")


@pytest.mark.gpu
def test_matmul_gpu_tf32_when_allowed():
    before = torch.get_float32_matmul_precision()
    g = torch.Generator(device=DEV).manual_seed(0)
    a, b = torch.randn(1024, 2048, device=DEV, generator=g), torch.randn(2048, 1536, device=DEV, generator=g)
    try:
        torch.set_float32_matmul_precision("high")
        _no_worse_than_torch(tri_mm.matmul(a, b), torch.matmul(a, b), a.double() @ b.double(), "tf32 matmul", factor=3.0)
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_gpu_forward_backward(dtype):
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(4, 500, 1024, device=DEV, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(3000, 1024, device=DEV, generator=g) / 32).to(dtype).requires_grad_()
    b = torch.randn(3000, device=DEV, generator=g).to(dtype).requires_grad_()
    dy = torch.randn(4, 500, 3000, device=DEV, generator=g).to(dtype)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y64 = torch.nn.functional.linear(*leaves64)
    y64.backward(dy.double())
    y = tri_linear.linear(x, w, b)
    y.backward(dy)
    leaves_t = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y_t = torch.nn.functional.linear(*leaves_t)
    y_t.backward(dy)
    _no_worse_than_torch(y, y_t, y64, f"linear forward {dtype}")
    for name, ours, theirs, ref in zip(("dx", "dweight", "dbias"), (x, w, b), leaves_t, leaves64):
        _no_worse_than_torch(ours.grad, theirs.grad, ref.grad, f"linear {name} {dtype}", factor=3.0)


# --- autocast ---------------------------------------------------------------------------------
#
# Autocast cannot see into a kernel launched from an autograd.Function, so the op casts a
# matrix product's inputs itself (registry.autocast_inputs). Without that, a Triton linear
# under bf16 autocast multiplies the float32 master weights in float32: right numbers, but
# many times slower than the tensor cores' bf16 (the GPT-2 training step ran 10x slower).
# float16 here: the CPU interpreter does not compute in bfloat16.


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["linear", "matmul"])
def test_matrix_products_follow_autocast(rng, backend, name):
    x = _rand(rng, 9, 24).requires_grad_()  # float32, like a residual stream
    w = _rand(rng, 24, 24).requires_grad_()  # float32 master weights
    with use_backend(backend), torch.autocast(DEV.type, dtype=torch.float16):
        out = ops.linear(x, w) if name == "linear" else ops.matmul(x, w)
    assert out.dtype == torch.float16, f"{backend} {name} under float16 autocast returned {out.dtype}"
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32  # the casts are differentiable
    ref = x.detach().half().double() @ (w.detach().half().double().T if name == "linear" else w.detach().half().double())
    assert_close(out, ref.to(DEV), hint=f"{backend} {name} under autocast")


def test_matrix_products_ignore_autocast_when_off(rng):
    x, w = _rand(rng, 9, 24), _rand(rng, 24, 24)
    with use_backend("triton"), torch.autocast(DEV.type, dtype=torch.float16, enabled=False):
        assert ops.linear(x, w).dtype == torch.float32

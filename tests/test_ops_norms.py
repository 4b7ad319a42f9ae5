"""RMSNorm and LayerNorm: the torch references, the Triton kernels, and the layers.

Forward and every gradient (dx, dweight, dbias) against float64 autograd on
fresh random inputs, through ``llm_course.ops`` under both backends: non-power-
of-two rows, leading dims, rows of zeros, sliced inputs, weights of another
dtype than x, several rows per backward program. Tolerances: float32 1e-5 (y,
dx) and 1e-4 (dweight, dbias: sums over rows, the absolute part scaled by the
largest value of the sum); float16 2e-3 and 5e-3; bfloat16 2e-2 and 5e-2 (GPU only). Dtypes taken by the kernels:
float32, float16, bfloat16 (float64 and integers refused with an error naming
the op); rows up to 65536 elements.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close
from llm_course.models.components.norms import LayerNorm, RMSNorm

SHAPES = [(3, 7, 33), (5, 1000), (37, 64), (4, 1)]
CPU_DTYPES = [torch.float32, torch.float16]
TOL = {  # (y and dx, dweight and dbias)
    torch.float32: (dict(atol=1e-5, rtol=1e-5), dict(atol=1e-4, rtol=1e-4)),
    torch.float16: (dict(atol=2e-3, rtol=2e-3), dict(atol=5e-3, rtol=5e-3)),
    torch.bfloat16: (dict(atol=2e-2, rtol=2e-2), dict(atol=5e-2, rtol=2e-2)),
}


def _rand(*shape, dtype=torch.float32, scale=1.0, shift=0.0):
    """Random values from torch's global generator (seeded by the ``rng`` fixture)."""
    return (torch.randn(*shape, device=get_device()) * scale + shift).to(dtype)


def _norm_ref(kind, x, w, b, eps):
    """float64 forward and autograd: returns a function dy -> (y, dx, dw, db)."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    if kind == "rms":
        y = F.rms_norm(x64, (x.shape[-1],), w64, eps)
    else:
        y = F.layer_norm(x64, (x.shape[-1],), w64, b64, eps)

    def grads(dy):
        y.backward(dy.double())
        return y.detach(), x64.grad, w64.grad, (b64.grad if b64 is not None else None)

    return grads


def _check(kind, backend, x, w, b, dy, eps, dtype):
    tol, tol_sum = TOL[dtype]
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    with use_backend(backend):
        y = ops.rms_norm(x, w, eps) if kind == "rms" else ops.layer_norm(x, w, b, eps)
    y.backward(dy)
    y_ref, dx_ref, dw_ref, db_ref = _norm_ref(kind, x, w, b, eps)(dy)
    name = f"{backend} {'rms_norm' if kind == 'rms' else 'layer_norm'}"
    assert y.dtype == x.dtype and x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    assert_close(y, y_ref, hint=f"{name} forward", **tol)
    assert_close(x.grad, dx_ref, hint=f"{name} dx", what="x.grad", **tol)
    # dweight and dbias are sums over rows: their absolute tolerance grows with the largest value of the sum
    scale = max(1.0, dw_ref.abs().max().item())
    assert_close(w.grad, dw_ref, hint=f"{name} dweight", what="weight.grad", atol=tol_sum["atol"] * scale, rtol=tol_sum["rtol"])
    if b is not None:
        scale = max(1.0, db_ref.abs().max().item())
        assert_close(b.grad, db_ref, hint=f"{name} dbias", what="bias.grad", atol=tol_sum["atol"] * scale, rtol=tol_sum["rtol"])


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm(rng, backend, dtype, shape):
    x, w, dy = _rand(*shape, dtype=dtype, scale=2.0, shift=0.5), _rand(shape[-1], dtype=dtype), _rand(*shape, dtype=dtype)
    _check("rms", backend, x, w, None, dy, 1e-6, dtype)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm(rng, backend, bias, dtype, shape):
    x, w, dy = _rand(*shape, dtype=dtype, scale=2.0, shift=3.0), _rand(shape[-1], dtype=dtype), _rand(*shape, dtype=dtype)
    b = _rand(shape[-1], dtype=dtype) if bias else None
    _check("layer", backend, x, w, b, dy, 1e-5, dtype)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_rows_of_zeros_and_constants(rng, kind):
    # N = 64: 1/N is exact, so a constant row has x - mean = 0 exactly, on a GPU too (with its fused multiply-adds)
    x = torch.cat([torch.zeros(2, 64), torch.full((2, 64), 3.0), torch.randn(3, 64) * 1e-3]).to(get_device())
    w, b, dy = _rand(64), _rand(64), _rand(7, 64)
    _check(kind, "triton", x, w, b if kind == "layer" else None, dy, 1e-5, torch.float32)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_float16_x_with_float32_weight(rng, kind):
    x, dy = _rand(6, 50, dtype=torch.float16), _rand(6, 50, dtype=torch.float16)
    w, b = _rand(50), _rand(50)  # parameters kept in float32, activations in float16
    _check(kind, "triton", x, w, b if kind == "layer" else None, dy, 1e-5, torch.float16)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_sliced_rows_and_expanded_gradient(rng, kind):
    wide = _rand(12, 90)
    x = wide[:, 7:57]  # rows 90 apart, 50 long: no copy needed
    w, b, dy = _rand(50), _rand(50), _rand(12, 50).T.contiguous().T  # dy with transposed strides
    _check(kind, "triton", x, w, b if kind == "layer" else None, dy, 1e-5, torch.float32)
    xg = x.detach().requires_grad_()
    op = ops.rms_norm if kind == "rms" else (lambda x, w: ops.layer_norm(x, w, None))
    with use_backend("triton"):
        op(xg, w).sum().backward()  # dy: ones with strides 0
    x64 = xg.detach().double().requires_grad_()
    (F.rms_norm(x64, (50,), w.double()) if kind == "rms" else F.layer_norm(x64, (50,), w.double())).sum().backward()
    assert_close(xg.grad, x64.grad, hint="gradient of sum(norm(x))", what="x.grad", atol=1e-5, rtol=1e-4)


def test_torch_references_match_torch_functional(rng):
    from llm_course.backends.torch_ops import norms

    x, w, b = _rand(4, 30, dtype=torch.float64), _rand(30, dtype=torch.float64), _rand(30, dtype=torch.float64)
    assert_close(norms.rms_norm(x, w, 1e-6), F.rms_norm(x, (30,), w, 1e-6), hint="torch rms_norm reference")
    assert_close(norms.layer_norm(x, w, b, 1e-5), F.layer_norm(x, (30,), w, b, 1e-5), hint="torch layer_norm reference")
    rstd = torch.rsqrt(x.pow(2).mean(-1) + 1e-6)
    dy = _rand(4, 30, dtype=torch.float64)
    dx, dw = norms.rms_norm_backward(dy, x, w, rstd)
    _, dx_ref, dw_ref, _ = _norm_ref("rms", x, w, None, 1e-6)(dy)
    assert_close(dx, dx_ref, hint="written-out RMSNorm dx")
    assert_close(dw, dw_ref, hint="written-out RMSNorm dweight")


def test_layers_hold_hugging_face_parameters_and_switch_backends(rng):
    rms, ln, ln_nb = RMSNorm(48, eps=1e-6), LayerNorm(48), LayerNorm(48, bias=False)
    assert set(dict(rms.named_parameters())) == {"weight"}
    assert set(dict(ln.named_parameters())) == {"weight", "bias"}
    assert set(dict(ln_nb.named_parameters())) == {"weight"} and ln_nb.bias is None
    x = _rand(2, 5, 48)
    for layer in (rms, ln, ln_nb):
        layer.to(get_device())
        with torch.no_grad():
            layer.weight.copy_(_rand(48))
        with use_backend("torch"):
            y_torch = layer(x)
        with use_backend("triton"):
            y_triton = layer(x)
        assert_close(y_triton, y_torch.double(), hint=f"{type(layer).__name__}: triton and torch backends differ")
    assert_close(ln(x), F.layer_norm(x.double(), (48,), ln.weight.double(), ln.bias.double()), hint="LayerNorm layer")


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.ones(4, 8, dtype=torch.int32), torch.ones(8)), "{op}: x has dtype int32"),
        (lambda: (torch.ones(4, 8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)), "{op}: x has dtype float64"),
        (lambda: (torch.ones(4, 8), torch.ones(7)), r"{op}: weight has shape \(7,\)"),
        (lambda: (torch.ones(4, 8), torch.ones(2, 4)), r"{op}: weight has shape \(2, 4\), expected \(8,\)"),
        (lambda: (torch.ones(2, 70_000), torch.ones(70_000)), "{op}: rows of 70000 elements are too long"),
    ],
)
def test_norm_errors_name_the_op(op, make, match):
    from llm_course.backends.triton_ops import layernorm, rmsnorm

    x, w = (t.to(get_device()) for t in make())
    fn = rmsnorm.rms_norm if op == "rms_norm" else (lambda x, w: layernorm.layer_norm(x, w, None))
    with pytest.raises((TypeError, ValueError), match=match.format(op=op)):
        fn(x, w)


def test_layer_norm_bias_length_error():
    from llm_course.backends.triton_ops import layernorm

    with pytest.raises(ValueError, match=r"layer_norm: bias has shape \(3,\)"):
        layernorm.layer_norm(torch.ones(2, 8, device=get_device()), torch.ones(8, device=get_device()), torch.ones(3, device=get_device()))


@pytest.mark.skipif(has_gpu(), reason="the interpreter's bfloat16 trap exists only without a GPU")
def test_norms_refuse_bfloat16_in_the_interpreter():
    from llm_course.backends.triton_ops import layernorm, rmsnorm

    x, w = torch.ones(2, 8, dtype=torch.bfloat16), torch.ones(8)
    with pytest.raises(TypeError, match="rms_norm: bfloat16 is not supported by the Triton interpreter"):
        rmsnorm.rms_norm(x, w)
    with pytest.raises(TypeError, match="layer_norm: bfloat16 is not supported by the Triton interpreter"):
        layernorm.layer_norm(x, w, None)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 4096), (8192, 1000), (2048, 8192), (300, 3 * 7 * 31), (4, 32768)])
def test_norms_gpu(rng, kind, dtype, shape):
    x, w, dy = _rand(*shape, dtype=dtype, shift=1.0), _rand(shape[-1], dtype=dtype), _rand(*shape, dtype=dtype)
    b = _rand(shape[-1], dtype=dtype) if kind == "layer" else None
    _check(kind, "triton", x, w, b, dy, 1e-6 if kind == "rms" else 1e-5, dtype)

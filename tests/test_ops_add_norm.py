"""``ops.add_layer_norm`` and ``ops.add_rms_norm``: a residual add and the norm after it, in one pass.

Both backends against a float64 computation of ``s = x + h``, ``y = norm(s)`` and of the
gradients of ``<s, ds> + <y, dy>`` with respect to x, h, weight (and bias): the sum's gradient
is the stream's own ``ds`` plus the norm's backward, and it reaches both x and h. Rows of
37 and 100 (not powers of two), 2-D and 3-D inputs, with and without a bias, x and h of one
dtype or of two (float32 stream, float16 sub-layer output, as under autocast: s then takes
x's dtype and y h's). And the fused Triton op gives the numbers of the two ops it replaces.

Tolerances: float32 1e-5 (outputs) and 1e-4 (gradients); with a float16 tensor 2e-3 and 1e-2.
bfloat16 on a GPU only (the interpreter gives zeros).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.device import get_device

BACKENDS = ["torch", "triton"]
F16 = torch.float16


def _tol(*dtypes):
    low = any(d != torch.float32 for d in dtypes)
    return (dict(atol=2e-3, rtol=2e-3), dict(atol=1e-2, rtol=1e-2)) if low else (dict(atol=1e-5, rtol=1e-5), dict(atol=1e-4, rtol=1e-4))


def _inputs(rng, shape, x_dtype, h_dtype, rms, with_bias, device=None):
    device = device or get_device()
    N = shape[-1]

    def r(*s, dtype=torch.float32, scale=1.0):
        return (torch.randn(*s, generator=rng) * scale).to(device=device, dtype=dtype)

    x, h = r(*shape, dtype=x_dtype, scale=2.0), r(*shape, dtype=h_dtype)
    weight = 1.0 + 0.1 * r(N)
    bias = None if rms or not with_bias else 0.1 * r(N)
    ds, dy = r(*shape, dtype=x_dtype), r(*shape, dtype=h_dtype)
    return x, h, weight, bias, ds, dy


def _float64_reference(x, h, weight, bias, ds, dy, rms, eps):
    leaves = [t.detach().double().requires_grad_() for t in (x, h, weight) + ((bias,) if bias is not None else ())]
    s = leaves[0] + leaves[1]
    if rms:
        y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * leaves[2]
    else:
        y = F.layer_norm(s, s.shape[-1:], leaves[2], leaves[3] if bias is not None else None, eps)
    grads = torch.autograd.grad((s * ds.double()).sum() + (y * dy.double()).sum(), leaves)
    return s, y, grads


def _run(backend, x, h, weight, bias, ds, dy, rms, eps):
    leaves = [t.detach().clone().requires_grad_() for t in (x, h, weight) + ((bias,) if bias is not None else ())]
    with use_backend(backend):
        if rms:
            s, y = ops.add_rms_norm(*leaves, eps=eps)
        else:
            s, y = ops.add_layer_norm(*leaves[:3], leaves[3] if bias is not None else None, eps=eps)
    grads = torch.autograd.grad((s.double() * ds.double()).sum() + (y.double() * dy.double()).sum(), leaves)
    return s, y, grads


CASES = [
    # (shape, x dtype, h dtype, rms, bias)
    ((5, 37), torch.float32, torch.float32, False, True),
    ((2, 3, 100), torch.float32, torch.float32, False, False),
    ((5, 37), torch.float32, torch.float32, True, False),
    ((2, 3, 100), torch.float32, F16, False, True),
    ((2, 3, 100), torch.float32, F16, True, False),
    ((4, 64), F16, F16, False, True),
    ((4, 64), F16, F16, True, False),
]
IDS = [f"{'rms' if c[3] else 'ln'}-{'x'.join(map(str, c[0]))}-{str(c[1])[6:]}+{str(c[2])[6:]}{'-bias' if c[4] else ''}" for c in CASES]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "x_dtype", "h_dtype", "rms", "with_bias"), CASES, ids=IDS)
def test_sum_norm_and_every_gradient_match_float64(rng, backend, shape, x_dtype, h_dtype, rms, with_bias):
    eps = 1e-6 if rms else 1e-5
    x, h, weight, bias, ds, dy = _inputs(rng, shape, x_dtype, h_dtype, rms, with_bias)
    s, y, grads = _run(backend, x, h, weight, bias, ds, dy, rms, eps)
    assert s.dtype == x_dtype and y.dtype == h_dtype, f"s {s.dtype}, y {y.dtype}: expected x's and h's dtypes"
    rs, ry, rgrads = _float64_reference(x, h, weight, bias, ds, dy, rms, eps)
    out_tol, grad_tol = _tol(x_dtype, h_dtype)
    torch.testing.assert_close(s.double(), rs, **out_tol, msg="s = x + h differs")
    torch.testing.assert_close(y.double(), ry, **out_tol, msg="y = norm(x + h) differs")
    names = ["dx", "dh", "dweight", "dbias"]
    for name, g, r in zip(names, grads, rgrads):
        assert g.dtype == {"dx": x_dtype, "dh": h_dtype}.get(name, torch.float32), f"{name} has dtype {g.dtype}"
        torch.testing.assert_close(g.double(), r, **grad_tol, msg=f"{name} differs from float64")


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
def test_fused_equals_the_add_then_the_norm(rng, rms):
    """The fused Triton op: the numbers of ops.add then the norm (the sum rounded to x's dtype first)."""
    x, h, weight, bias, _, _ = _inputs(rng, (6, 48), torch.float32, F16, rms, True)
    with use_backend("triton"):
        s_ref = ops.add(x, h.float())
        y_ref = (ops.rms_norm(s_ref, weight, 1e-6) if rms else ops.layer_norm(s_ref, weight, bias, 1e-5)).to(F16)
        s, y = ops.add_rms_norm(x, h, weight, 1e-6) if rms else ops.add_layer_norm(x, h, weight, bias, 1e-5)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unused_sum_still_gives_the_norms_gradient(rng, backend):
    """When only y is used, ds is 0: dx = dh = the norm's backward."""
    x, h, weight, bias, _, dy = _inputs(rng, (3, 20), torch.float32, torch.float32, False, True)
    x, h = x.requires_grad_(), h.requires_grad_()
    with use_backend(backend):
        _, y = ops.add_layer_norm(x, h, weight, bias)
    dx, dh = torch.autograd.grad((y * dy).sum(), (x, h))
    s = (x + h).detach().requires_grad_()
    (expected,) = torch.autograd.grad((F.layer_norm(s, (20,), weight, bias, 1e-5) * dy).sum(), s)
    torch.testing.assert_close(dx, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dh, expected, rtol=1e-4, atol=1e-5)


# --- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
def test_gpu_autocast_shapes_bf16(rng, rms):
    """GPT-2 124M's shape under autocast: a float32 stream, bfloat16 sub-layer outputs, 16,384 rows of 768."""
    if get_device().type != "cuda":
        pytest.skip("needs a CUDA GPU")
    eps = 1e-6 if rms else 1e-5
    x, h, weight, bias, ds, dy = _inputs(rng, (16384, 768), torch.float32, torch.bfloat16, rms, True)
    s, y, grads = _run("triton", x, h, weight, bias, ds, dy, rms, eps)
    rs, ry, rgrads = _float64_reference(x, h, weight, bias, ds, dy, rms, eps)
    torch.testing.assert_close(s.double(), rs, atol=1e-2, rtol=1e-2)  # h was bfloat16: s exact in float32
    torch.testing.assert_close(y.double(), ry, atol=5e-2, rtol=2e-2)  # y rounded to bfloat16
    for g, r in zip(grads, rgrads):
        torch.testing.assert_close(g.double(), r, atol=5e-2, rtol=5e-2)

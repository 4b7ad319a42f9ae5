"""Elementwise add: the torch reference and the Triton kernel (llm_course/backends/*/add.py).

Compared with a float64 sum of the same inputs. Tolerances (``checks.TOLERANCES``):
float32 1e-5, float16 2e-3, bfloat16 2e-2 (GPU only). The kernel takes float32,
float16 and bfloat16 of any shape; float64 and integers are refused with an
error naming the op; non-contiguous inputs are copied first.
"""

from __future__ import annotations

import pytest
import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close

SHAPES = [(1,), (4097,), (3, 7, 33), (5, 1000)]
CPU_DTYPES = [torch.float32, torch.float16]


def _rand(rng, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=rng).to(dtype).to(get_device())


def _triton():
    from llm_course.backends.triton_ops import add

    return add


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_add_matches_float64(rng, backend, dtype, shape):
    x, y = _rand(rng, *shape, dtype=dtype), _rand(rng, *shape, dtype=dtype)
    with use_backend(backend):
        out = ops.add(x, y)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, x.double() + y.double(), hint=f"{backend} add is wrong")


def test_add_gradients(rng):
    x, y = _rand(rng, 3, 333).requires_grad_(), _rand(rng, 3, 333).requires_grad_()
    dout = _rand(rng, 3, 333)
    with use_backend("triton"):
        ops.add(x, y).backward(dout)
    assert_close(x.grad, dout.double(), hint="dx of x + y is dout", what="x.grad")
    assert_close(y.grad, dout.double(), hint="dy of x + y is dout", what="y.grad")


def test_add_non_contiguous_and_empty(rng):
    x = _rand(rng, 33, 20).T  # (20, 33), transposed view
    y = _rand(rng, 20, 70)[:, ::2][:, :33]  # every other element
    out = _triton().add(x, y)
    assert_close(out, x.double() + y.double(), hint="add of non-contiguous views")
    empty = torch.empty(0, 5, device=get_device())
    assert _triton().add(empty, empty).shape == (0, 5)


def test_add_out_argument(rng):
    x, y = _rand(rng, 1000), _rand(rng, 1000)
    buf = torch.full((2000,), 7.0, device=get_device())
    _triton().add_forward(x, y, out=buf[:1000])
    assert_close(buf[:1000], x.double() + y.double(), hint="add into out")
    assert (buf[1000:] == 7.0).all(), "add wrote past the end of out"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.ones(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32)), "add: x has dtype int32"),
        (lambda: (torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)), "add: x has dtype float64"),
        (lambda: (torch.ones(4), torch.ones(5)), r"add: inputs must have the same shape, got x \(4,\), y \(5,\)"),
        (lambda: (torch.ones(4), torch.ones(4, dtype=torch.float16)), "add: inputs have different dtypes"),
        (lambda: ([1.0], torch.ones(1)), "add: x must be a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("entry", ["add", "add_forward"])  # the entry point, and the public launcher
def test_add_errors_name_the_op(make, match, entry):
    x, y = make()
    if isinstance(x, torch.Tensor):
        x, y = x.to(get_device()), y.to(get_device())
    with pytest.raises((TypeError, ValueError), match=match):
        getattr(_triton(), entry)(x, y)


@pytest.mark.skipif(has_gpu(), reason="the interpreter's bfloat16 trap exists only without a GPU")
def test_add_refuses_bfloat16_in_the_interpreter():
    x = torch.ones(4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="add: bfloat16 is not supported by the Triton interpreter"):
        _triton().add(x, x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_add_gpu_large(dtype):
    torch.manual_seed(0)
    dev = get_device()
    x = torch.randn(4096 * 4096 + 17, device=dev, dtype=dtype)
    y = torch.randn_like(x)
    out = _triton().add(x, y)
    assert_close(out, x.double() + y.double(), hint=f"add on the GPU in {dtype}")

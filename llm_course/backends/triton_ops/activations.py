"""The MLPs' activations in Triton: GELU (tanh approximation) and SiLU-times-gate, forward and backward.

Both are elementwise, laid out like the vector add: the tensors are seen as flat
vectors of ``n`` elements, one program per block of ``BLOCK_SIZE``, the tail masked.
Each element is computed in float32 and stored in the input's dtype.

GELU, tanh approximation (GPT-2's ``"gelu_new"``), written with a sigmoid, since
``0.5 * (1 + tanh(z)) = sigmoid(2 z)`` (the ``sigmoid`` below never overflows)::

    z = sqrt(2/pi) * (x + 0.044715 * x**3),   s = sigmoid(2 z)
    y  = x * s
    dx = dy * (s + 2 * x * s * (1 - s) * sqrt(2/pi) * (1 + 3 * 0.044715 * x**2))

SiLU-times-gate (SwiGLU), with ``s = sigmoid(gate)``::

    y     = gate * s * up
    dgate = dy * up * s * (1 + gate * (1 - s))
    dup   = dy * gate * s

Memory traffic is the whole cost (a handful of FLOPs per element). Fused, the SwiGLU
forward reads gate and up and writes y: 3 tensors, where ``silu(gate) * up`` in two
ops moves 5. The backward saves only the inputs (x; gate and up) and recomputes the
sigmoid, rather than keeping an extra tensor alive between forward and backward.

Layers: the kernels, the launchers (``*_forward``, ``*_backward``), the
``autograd.Function`` classes, then ``gelu_tanh`` and ``silu_mul`` (the ops' signatures),
which check their inputs once before anything is launched.
The references are in ``llm_course/backends/torch_ops/activations.py``.
"""

from __future__ import annotations

import math

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_tensor, check_tensors  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.launch import cdiv  # noqa: E402
from llm_course.backends.triton_ops.launch_cache import launch  # noqa: E402

BLOCK_SIZE = 1024  # elements per program: 4 warps x 32 threads x 8 elements
NUM_WARPS = 4
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


# --- kernels -----------------------------------------------------------------------------


@triton.jit
def sigmoid(z):
    """``1 / (1 + exp(-z))`` computed with ``exp(-|z|) <= 1``, so that it never overflows for very negative z."""
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def gelu_tanh_fwd_kernel(x_ptr, y_ptr, n, C: tl.constexpr, A: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """y = x * sigmoid(2 z), z = C * (x + A * x**3), for this program's block. x, y (n,) contiguous."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    s = sigmoid(2.0 * C * (x + A * x * x * x))
    tl.store(y_ptr + offsets, (x * s).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gelu_tanh_bwd_kernel(dy_ptr, x_ptr, dx_ptr, n, C: tl.constexpr, A: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """dx = dy * (s + 2 x s (1 - s) dz/dx), the sigmoid recomputed from x. dy, x, dx (n,) contiguous."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    s = sigmoid(2.0 * C * (x + A * x * x * x))
    dz = C * (1.0 + 3.0 * A * x * x)
    dx = dy * (s + 2.0 * x * s * (1.0 - s) * dz)
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def silu_mul_fwd_kernel(gate_ptr, up_ptr, y_ptr, n, BLOCK_SIZE: tl.constexpr):
    """y = gate * sigmoid(gate) * up for this program's block. gate, up, y (n,) contiguous."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n
    g = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offsets, (g * sigmoid(g) * u).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def silu_mul_bwd_kernel(dy_ptr, gate_ptr, up_ptr, dgate_ptr, dup_ptr, n, BLOCK_SIZE: tl.constexpr):
    """dgate = dy * up * s * (1 + gate * (1 - s)), dup = dy * gate * s, s = sigmoid(gate). All (n,) contiguous."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    s = sigmoid(g)
    tl.store(dgate_ptr + offsets, (dy * u * s * (1.0 + g * (1.0 - s))).to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_ptr + offsets, (dy * g * s).to(dup_ptr.dtype.element_ty), mask=mask)


# --- launchers ---------------------------------------------------------------------------


def _grid(n: int) -> tuple[int]:
    return (cdiv(n, BLOCK_SIZE),)


def gelu_tanh_forward(x: torch.Tensor) -> torch.Tensor:
    """x (...) float32, float16 or bfloat16 (GPU only) -> y (...) in x's dtype."""
    x = x.contiguous()  # no copy when already contiguous
    y = torch.empty_like(x)
    if x.numel():
        launch(gelu_tanh_fwd_kernel, _grid(x.numel()), x, y, x.numel(), C=GELU_C, A=GELU_A, BLOCK_SIZE=BLOCK_SIZE, num_warps=NUM_WARPS)
    return y


def gelu_tanh_backward(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy, x (...) of the same shape and dtype -> dx (...)."""
    dy, x = dy.contiguous(), x.contiguous()
    dx = torch.empty_like(x)
    if x.numel():
        launch(gelu_tanh_bwd_kernel, _grid(x.numel()), dy, x, dx, x.numel(), C=GELU_C, A=GELU_A, BLOCK_SIZE=BLOCK_SIZE, num_warps=NUM_WARPS)
    return dx


def silu_mul_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up (...) of the same shape and dtype -> y (...)."""
    gate, up = gate.contiguous(), up.contiguous()
    y = torch.empty_like(gate)
    if gate.numel():
        launch(silu_mul_fwd_kernel, _grid(gate.numel()), gate, up, y, gate.numel(), BLOCK_SIZE=BLOCK_SIZE, num_warps=NUM_WARPS)
    return y


def silu_mul_backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dy, gate, up (...) of the same shape and dtype -> (dgate, dup), each (...)."""
    dy, gate, up = dy.contiguous(), gate.contiguous(), up.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    if gate.numel():
        launch(
            silu_mul_bwd_kernel, _grid(gate.numel()), dy, gate, up, dgate, dup, gate.numel(),
            BLOCK_SIZE=BLOCK_SIZE, num_warps=NUM_WARPS,
        )  # fmt: skip
    return dgate, dup


# --- autograd ----------------------------------------------------------------------------


class GeluTanhFunction(torch.autograd.Function):
    """Saves x (not y): the backward recomputes the sigmoid from it."""

    @staticmethod
    def forward(ctx, x):
        y = gelu_tanh_forward(x)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    @once_differentiable  # the backward kernel is not itself differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return gelu_tanh_backward(dy, x).view(x.shape)


class SiluMulFunction(torch.autograd.Function):
    """Saves gate and up: the backward needs both (and recomputes the sigmoid)."""

    @staticmethod
    def forward(ctx, gate, up):
        y = silu_mul_forward(gate, up)
        ctx.save_for_backward(gate, up)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dgate, dup = silu_mul_backward(dy, gate, up)
        return dgate.view(gate.shape), dup.view(up.shape)


# --- the ops: inputs checked here, once ----------------------------------------------------


@checks_own_inputs  # llm_course.ops does not check again what is checked here
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation, with the Triton kernels; differentiable. x (...) -> (...)."""
    contract.gelu_tanh(x)  # the op's check: a floating-point tensor holding data
    check_tensor("gelu_tanh", "x", x)  # and the kernels' own: a device Triton runs on, a dtype they support
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.gelu_tanh(x)
    return GeluTanhFunction.apply(x)


@checks_own_inputs  # llm_course.ops does not check again what is checked here
def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with the Triton kernels; differentiable. gate, up (...) same shape -> (...)."""
    contract.silu_mul(gate, up)  # the op's check: tensors of one shape, dtype and device, floating point
    check_tensors("silu_mul", gate=gate, up=up)  # and the kernels' own: a device Triton runs on, a dtype they support
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.silu_mul(gate, up)
    return SiluMulFunction.apply(gate, up)

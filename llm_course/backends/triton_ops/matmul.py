"""Tiled matrix multiply in Triton: C = A @ B (+ bias), accumulated in float32.

    a (M, K) @ b (K, N) -> c (M, N)

The idea, in three lines (the notebook 01b builds it up step by step):

* Cut C into tiles of BLOCK_M x BLOCK_N. One program (a block of threads) owns
  one tile of C and computes it completely.
* To compute its tile, a program walks along K in steps of BLOCK_K: it loads a
  (BLOCK_M, BLOCK_K) tile of A and a (BLOCK_K, BLOCK_N) tile of B and adds their
  product (``tl.dot``, which runs on the tensor cores) to a float32 accumulator.
* A tile loaded once is used BLOCK_N (or BLOCK_M) times, so big tiles do many
  FLOPs per byte read: that is what lets a matmul run at the GPU's arithmetic peak
  instead of its memory bandwidth.

Details that make it correct for any input:

* **edges**: M, N and K need not be multiples of the block sizes. The K tail is
  masked (``other=0.0``: zeros add nothing to a dot product); rows past M and
  columns past N are wrapped back onto real ones for the loads, and masked out
  of the store, so no program reads or writes outside the tensors.
* **strides**: the kernel takes each tensor's strides, so a transposed view
  (``w.T``) is read in place, without a copy. ``linear`` uses that for
  ``x @ weight.T``, and the backward pass for ``dy.T @ x``.
* **tile order**: programs are numbered so that consecutive ones work on a
  group of GROUP_SIZE_M rows of tiles (a "grouped" or "swizzled" order). Tiles
  that run at the same time then share their A and B tiles, which stay in the
  L2 cache instead of being read again from memory.

Precision. fp16 and bf16 inputs are multiplied exactly and summed in float32,
like cuBLAS. For float32 inputs a GPU's ``tl.dot`` would by default round them
to TF32 (10-bit mantissa) first. This module follows PyTorch's own switch,
``torch.get_float32_matmul_precision()``: "highest" (PyTorch's default) asks
``tl.dot`` for true float32 (``input_precision="ieee"``), as ``torch.matmul``
then does; "high" or "medium" allow TF32, much faster on tensor cores. The
Triton interpreter on the CPU always computes in float32.

Block sizes come from ``@triton.autotune``: on a GPU it tries the configurations
below once per (M, N, K) and dtype and keeps the fastest; in the interpreter
there is a single small one (see ``llm_course.device.autotune_configs``).
"""

from __future__ import annotations

from llm_course.device import autotune_configs, configure_triton

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends.triton_ops.checks import check_same_device, check_same_dtype, check_tensor  # noqa: E402
from llm_course.backends.triton_ops.launch import cdiv, next_power_of_2  # noqa: E402

OP = "matmul"


def _config(bm: int, bn: int, bk: int, stages: int, warps: int, group: int = 8) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_SIZE_M": group}, num_stages=stages, num_warps=warps)


# Hopper-friendly tiles (H100: 228 KB shared memory per SM). A config whose
# stages don't fit in shared memory (float32 with big tiles) is skipped by the
# autotuner as "out of resources".
GPU_CONFIGS = [
    _config(128, 256, 64, 3, 8),
    _config(128, 256, 64, 3, 8, group=4),  # the group height that pays depends on the size
    _config(128, 256, 64, 3, 8, group=16),  # (H200: 4 best at 4096^3, 16 or 8 at 8192^3)
    _config(256, 128, 64, 3, 8),
    _config(128, 256, 64, 4, 8),  # deeper pipeline for the largest products
    _config(256, 128, 64, 4, 8),
    _config(128, 128, 64, 4, 8),
    _config(128, 128, 64, 4, 4),
    _config(128, 128, 32, 4, 4),
    _config(64, 256, 32, 4, 4),
    _config(128, 64, 32, 4, 4),
    _config(64, 128, 32, 4, 4),
    _config(64, 64, 32, 5, 2),  # small matrices: more programs to fill the GPU
]
# The interpreter runs one program after the other on the CPU: one modest tile.
CPU_CONFIG = _config(32, 32, 32, 1, 4, group=4)


def prune_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Drop configs that cannot pay off, before the autotuner compiles and times them:

    * tiles much larger than the matrix (a 256-row tile for 40 rows is mostly masked work);
    * for float32, tiles above 128 x 128 x 32: they need twice the shared memory, and in
      true fp32 they run on the CUDA cores, where big tiles only cost compile time.
    """
    if len(configs) == 1:
        return configs
    M, N = named_args["M"], named_args["N"]
    fp32 = named_args["a_ptr"].dtype == torch.float32
    keep = [
        c for c in configs
        if c.kwargs["BLOCK_M"] <= max(64, next_power_of_2(M))
        and c.kwargs["BLOCK_N"] <= max(64, next_power_of_2(N))
        and not (fp32 and (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 128 * 128 or c.kwargs["BLOCK_K"] > 32))
    ]  # fmt: skip
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


@triton.jit
def grouped_tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr):
    """Map a program id to the (row, column) of the C tile it computes, in grouped order.

    Row-major order would visit a whole row of tiles (reading all of B) before
    moving down. Grouped order walks down GROUP_SIZE_M rows of tiles, then moves
    one column right, so that the programs running together reuse the same few
    tiles of A and of B from the L2 cache.
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)  # tiles along M
    num_pid_n = tl.cdiv(N, BLOCK_N)  # tiles along N
    num_pid_in_group = GROUP_SIZE_M * num_pid_n  # programs in one group of rows
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)  # the last group may be shorter
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.autotune(
    configs=autotune_configs(GPU_CONFIGS, CPU_CONFIG),
    key=["M", "N", "K", "HAS_BIAS", "INPUT_PRECISION"],  # and the dtypes: retuned for each
    prune_configs_by={"early_config_prune": prune_configs},
)
@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr,  # A (M, K), B (K, N), C (M, N), bias (N,) or unused
    M, N, K,
    stride_am, stride_ak,  # elements to step one row / one column in A
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr,  # add bias[n] to every row of C (the epilogue of a linear layer)
    INPUT_PRECISION: tl.constexpr,  # "ieee" (true fp32) or "tf32"; ignored for fp16/bf16
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):
    """One program computes one (BLOCK_M, BLOCK_N) tile of C."""
    pid = tl.program_id(axis=0)
    pid_m, pid_n = grouped_tile_ids(pid, M, N, BLOCK_M, BLOCK_N, GROUP_SIZE_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of A and C
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) columns of B and C
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,) position inside the current K step
    # Edge tiles: rows past M (columns past N) wrap around to real rows (% M), so the
    # loads need no mask along M and N; those rows' results are dropped by the store's
    # mask. Unmasked loads are faster, and the hints tell the compiler each block of
    # offsets starts at a multiple of the block and runs contiguously (true except where
    # a row wraps, which Triton's 16-divisibility of the sizes keeps out of a vector load).
    offs_am = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # float32, whatever the input dtype
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K  # the last step may have fewer than BLOCK_K columns left
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)  # (BLOCK_M, BLOCK_K)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)  # acc += a @ b, in float32
        a_ptrs += BLOCK_K * stride_ak  # next K step
        b_ptrs += BLOCK_K * stride_bk

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)  # (BLOCK_N,)
        acc += bias.to(tl.float32)[None, :]
    c = acc.to(c_ptr.dtype.element_ty)  # round once, at the end
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))  # only the real rows and columns


def dot_input_precision(dtype: torch.dtype) -> str:
    """What ``tl.dot`` is asked for: TF32 for float32 only when PyTorch allows it (see the module docstring)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"  # the default; for fp16/bf16 inputs it changes nothing


def _max_offset(t: torch.Tensor) -> int:
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def launch_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Check the inputs, allocate C, launch the kernel. a (M, K), b (K, N), bias (N,) -> (M, N).

    Any strides are fine (a transposed view is read in place). No autograd here:
    see :func:`matmul` and ``linear.py``.
    """
    check_tensor(OP, "a", a, ndim=2)
    check_tensor(OP, "b", b, ndim=2)
    check_same_device(OP, a=a, b=b, bias=bias)
    check_same_dtype(OP, a=a, b=b, bias=bias)
    M, K = a.shape
    K2, N = b.shape
    if K != K2:
        raise ValueError(f"{OP}: inner dimensions differ: a is {tuple(a.shape)} and b is {tuple(b.shape)} (a's columns must equal b's rows)")
    if bias is not None:
        check_tensor(OP, "bias", bias, ndim=1)
        if bias.shape[0] != N:
            raise ValueError(f"{OP}: bias has shape {tuple(bias.shape)}, expected ({N},) to match the output's columns")
    for name, t in (("a", a), ("b", b)):
        if _max_offset(t) >= 2**31:
            raise ValueError(f"{OP}: {name} spans 2**31 elements or more, beyond this kernel's 32-bit offsets")
    if M * N >= 2**31:
        raise ValueError(f"{OP}: the output ({M}, {N}) has 2**31 elements or more, beyond this kernel's 32-bit offsets")

    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if M == 0 or N == 0:
        return c
    if K == 0:  # an empty sum: zeros (plus the bias)
        return c.zero_() if bias is None else c.copy_(bias.expand(M, N))

    def grid(meta):  # one program per tile of C
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    matmul_kernel[grid](
        a, b, c, bias if bias is not None else c,  # an unused pointer must still be a tensor
        M, N, K,
        a.stride(0), a.stride(1),
        b.stride(0), b.stride(1),
        c.stride(0), c.stride(1),
        HAS_BIAS=bias is not None,
        INPUT_PRECISION=dot_input_precision(a.dtype),
    )  # fmt: skip
    return c


class MatmulFunction(torch.autograd.Function):
    """C = A @ B with its backward through the same kernel: dA = dC @ B^T, dB = A^T @ dC."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return launch_matmul(a, b)

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dc: torch.Tensor):
        a, b = ctx.saved_tensors
        da = launch_matmul(dc, b.T) if ctx.needs_input_grad[0] else None  # (M, N) @ (N, K)
        db = launch_matmul(a.T, dc) if ctx.needs_input_grad[1] else None  # (K, M) @ (M, N)
        return da, db


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The matrix product in Triton. a (M, K), b (K, N) -> (M, N), in the inputs' dtype."""
    # launch_matmul checks a and b. Not marked checks_own_inputs: llm_course.ops runs the op's check
    # on the inputs as given, before autocast casts them to one dtype (the check refuses two dtypes).
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return MatmulFunction.apply(a, b)
    return launch_matmul(a, b)  # no graph to record: skip autograd's bookkeeping

"""Stage 1 exercise: a tiled matrix multiply in Triton.

    c = a @ b        a (M, K), b (K, N) -> c (M, N), summed in float32

One program computes one (BLOCK_M, BLOCK_N) tile of c. It walks along K in
steps of BLOCK_K; at each step it loads a (BLOCK_M, BLOCK_K) tile of a and a
(BLOCK_K, BLOCK_N) tile of b and adds their product to a float32 accumulator
with ``tl.dot``. At the end it rounds the accumulator to c's dtype and stores it.

Given here: the launcher (:func:`launch_matmul`, :func:`matmul`: it checks the
inputs, allocates c and starts one program per tile of c) and the grouped tile
order, ``grouped_tile_ids`` from ``llm_course/backends/triton_ops/matmul.py``.
Yours: the body of :func:`matmul_kernel`. Notebook 01b walks through it.
"""

from __future__ import annotations

from llm_course.device import configure_triton, has_gpu, is_interpreter

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.triton_ops.checks import check_same_device, check_same_dtype, check_tensor  # noqa: E402
from llm_course.backends.triton_ops.matmul import grouped_tile_ids  # noqa: E402
from llm_course.grading import require_written  # noqa: E402


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):  # fmt: skip
    """Compute one (BLOCK_M, BLOCK_N) tile of c = a @ b.

    Inputs: pointers to a (M, K), b (K, N) and c (M, N), all three of the same
    dtype (float16, bfloat16 or float32), and their strides: element (i, j) of
    a is at ``a_ptr + i * stride_am + j * stride_ak`` (likewise for b and c).
    The strides may be anything: a transposed view has stride_ak > stride_am.
    M, N and K need not be multiples of the block sizes.

    Steps:

    1. ``pid_m, pid_n = grouped_tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_SIZE_M)``
       gives the row and column of this program's tile of c.
    2. The tile's row indices ``offs_m`` (BLOCK_M,), column indices ``offs_n``
       (BLOCK_N,), and ``offs_k = tl.arange(0, BLOCK_K)``; from them the
       pointers to the first tile of a (BLOCK_M, BLOCK_K) and of b (BLOCK_K, BLOCK_N),
       built with the strides.
    3. A float32 accumulator of zeros, (BLOCK_M, BLOCK_N): summing K products in
       float16 would lose most of their digits.
    4. Loop over ``tl.cdiv(K, BLOCK_K)`` steps (the last one may be partial). At
       each step load the two tiles with masks that keep rows < M, columns < N,
       and k < K (``other=0.0``: a zero adds nothing to the sum), add
       ``tl.dot(a_tile, b_tile)`` to the accumulator, and move both pointers
       BLOCK_K steps along K.
    5. Cast the accumulator to c's dtype (``c_ptr.dtype.element_ty``) and store
       it, masked to rows < M and columns < N.

    Hint: ``tl.dot(a, b, acc)`` returns ``acc + a @ b``. ``offs_m[:, None]`` and
    ``offs_k[None, :]`` broadcast to a (BLOCK_M, BLOCK_K) grid of offsets.
    """
    # BEGIN EXERCISE matmul_kernel
    # stub raises: "write matmul_kernel: the tile offsets, the masked loop over K with tl.dot into a float32 accumulator, and the masked store"
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
    # END EXERCISE matmul_kernel


def default_blocks() -> dict:
    """Block sizes for :func:`matmul`: small ones in the interpreter, GPU-sized ones otherwise."""
    if is_interpreter() or not has_gpu():
        return dict(block_m=32, block_n=32, block_k=32, group_size_m=4)
    return dict(block_m=128, block_n=128, block_k=32, group_size_m=8)


def launch_matmul(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, block_m: int, block_n: int, block_k: int, group_size_m: int = 4
) -> torch.Tensor:
    """Run :func:`matmul_kernel` to write a @ b into c (any strides). a (M, K), b (K, N), c (M, N)."""
    M, K = a.shape
    N = b.shape[1]
    require_written(matmul_kernel)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)  # one program per tile of c
    matmul_kernel[grid](
        a, b, c, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_SIZE_M=group_size_m,
        **({} if is_interpreter() else dict(num_warps=4, num_stages=3)),
    )  # fmt: skip
    return c


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c = a @ b with your kernel. a (M, K), b (K, N) -> (M, N) in the inputs' dtype (no autograd)."""
    require_written(matmul_kernel)
    check_tensor("matmul", "a", a, ndim=2)
    check_tensor("matmul", "b", b, ndim=2)
    check_same_device("matmul", a=a, b=b)
    check_same_dtype("matmul", a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: a is {tuple(a.shape)} and b is {tuple(b.shape)}")
    c = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    if c.numel() == 0:
        return c
    if a.shape[1] == 0:
        return c.zero_()
    return launch_matmul(a, b, c, **default_blocks())

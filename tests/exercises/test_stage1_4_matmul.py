"""Graded tests of stage 1: the tiled matmul kernel (exercises/stage1_kernels/matmul.py).

Every result is compared, element by element, with a float64 product of the
same inputs. Each test aims at one usual mistake, and says which in its message:
too few K steps, no mask on the K tail, no mask on the store, ignoring the
strides, summing in float16, not moving the pointers along K.

Block sizes are fixed (32) where a test depends on them, so that the shapes
below are known to straddle tile edges.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close, tolerance

TOPIC = "stage1_kernels/matmul"
BLOCKS = dict(block_m=32, block_n=32, block_k=32, group_size_m=4)
PAD = 32  # rows and columns of padding around views: at least a block, so stray accesses stay inside
SENTINEL = 999.0  # exact in float16 and float32

matmul_exercise = pytest.mark.exercise("matmul_kernel", stage=1, points=5, title="Triton: tiled matmul kernel")


def _tol(dtype: torch.dtype) -> dict:
    """float32 on a GPU goes through TF32 tensor cores in tl.dot by default; elsewhere it is exact float32."""
    return tolerance("tf32" if dtype == torch.float32 and has_gpu() else dtype)


def _rand(rng, *shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=rng).to(dtype).to(get_device())


def _reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.double().cpu() @ b.double().cpu()


def _run(mod, a, b) -> torch.Tensor:
    """Launch the kernel with 32x32x32 blocks into a view of c inside a larger tensor, and check
    that nothing outside c was written (so that a missing store mask fails here, safely)."""
    M, N = a.shape[0], b.shape[1]
    c, buf = _padded(torch.zeros(M, N, device=a.device, dtype=a.dtype), pad=PAD, fill=SENTINEL)
    mod.launch_matmul(a, b, c, **BLOCKS)
    outside = torch.ones_like(buf, dtype=torch.bool)
    outside[PAD : PAD + M, PAD : PAD + N] = False
    assert (buf[outside] == SENTINEL).all(), (
        f"The kernel wrote outside c (for M = {M}, N = {N}): mask the store with offs_m < M and offs_n < N, "
        "and address c with its strides stride_cm and stride_cn."
    )
    return c


def _padded(t: torch.Tensor, pad: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A view of ``t``'s values inside a larger buffer filled with ``fill``: (view, buffer)."""
    rows, cols = t.shape
    buf = torch.full((rows + 2 * pad, cols + 2 * pad), fill, dtype=t.dtype, device=t.device)
    view = buf[pad : pad + rows, pad : pad + cols]
    view.copy_(t)
    return view, buf


@matmul_exercise
def test_one_tile(impl, rng):
    mod = impl.load(TOPIC)
    a, b = _rand(rng, 32, 32), _rand(rng, 32, 32)
    out = _run(mod, a, b)
    assert_close(out, _reference(a, b), **_tol(a.dtype), hint="A single 32x32x32 tile is wrong: check the offsets, the pointers built from the strides, and tl.dot into the accumulator.")


@matmul_exercise
def test_several_k_steps(impl, rng):
    mod = impl.load(TOPIC)
    a, b = _rand(rng, 32, 128), _rand(rng, 128, 32)  # K = 4 full steps of 32
    out = _run(mod, a, b)
    assert_close(out, _reference(a, b), **_tol(a.dtype), hint="With K = 4 x BLOCK_K the result is wrong: after each step move a_ptrs and b_ptrs forward by BLOCK_K along K (times stride_ak and stride_bk).")


@matmul_exercise
@pytest.mark.parametrize("K", [70, 29, 1])
def test_k_not_a_multiple_of_block_k(impl, rng, K):
    mod = impl.load(TOPIC)
    a, b = _rand(rng, 32, K), _rand(rng, K, 32)
    out = _run(mod, a, b)
    assert_close(out, _reference(a, b), **_tol(a.dtype), hint=f"With K = {K}, not a multiple of BLOCK_K = 32, the result is wrong: loop over tl.cdiv(K, BLOCK_K) steps so that the last, partial step is not skipped, and mask its loads with k < K (counting from the step's start).")


@matmul_exercise
@pytest.mark.parametrize("shape", [(33, 47, 32), (1, 1, 32), (65, 17, 64)])
def test_m_and_n_edges(impl, rng, shape):
    mod = impl.load(TOPIC)
    M, N, K = shape
    a, b = _rand(rng, M, K), _rand(rng, K, N)
    out = _run(mod, a, b)
    assert_close(out, _reference(a, b), **_tol(a.dtype), hint=f"With M = {M}, N = {N} (not multiples of the 32x32 tile) the result is wrong: check the row and column offsets and the masks on the edges.")


@matmul_exercise
@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_transposed_views(impl, rng, which):
    mod = impl.load(TOPIC)
    M, N, K = 40, 36, 50
    a = _rand(rng, K, M).T if which in ("a", "both") else _rand(rng, M, K)  # (M, K), maybe a transposed view
    b = _rand(rng, N, K).T if which in ("b", "both") else _rand(rng, K, N)  # (K, N)
    out = _run(mod, a, b)
    assert_close(out, _reference(a, b), **_tol(a.dtype), hint=f"The result is wrong when {'a and b are transposed views' if which == 'both' else which + ' is a transposed view'}: build every address from the strides (stride_am, stride_ak, stride_bk, stride_bn), never from a row length.")


@matmul_exercise
def test_k_tail_reads_nothing_past_k(impl, rng):
    mod = impl.load(TOPIC)
    M, N, K = 32, 32, 45
    a, _ = _padded(_rand(rng, M, K), pad=PAD, fill=float("nan"))  # NaN all around the values
    b, _ = _padded(_rand(rng, K, N), pad=PAD, fill=float("nan"))
    out = _run(mod, a, b)
    assert_close(out, _reference(a, b), **_tol(a.dtype), hint="The last K step reads past column K of a or row K of b (here views inside larger tensors full of NaN): mask both loads so that only k < K is read, with other=0.0.")


@matmul_exercise
def test_float16_sums_in_float32(impl, rng):
    mod = impl.load(TOPIC)
    a, b = _rand(rng, 32, 1024, dtype=torch.float16), _rand(rng, 1024, 32, dtype=torch.float16)
    out = _run(mod, a, b)
    assert out.dtype == torch.float16, f"The output of float16 inputs must be float16, got {out.dtype}."
    # Summed in float32 and rounded once, the result is within float16's rounding of the exact
    # product; summed in float16, 1024 products lose far more than that.
    assert_close(out, _reference(a, b), hint="float16 inputs with a long K lose precision: accumulate in a float32 tile (tl.zeros(..., dtype=tl.float32)) and cast to c's dtype only when storing.")


@matmul_exercise
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matmul_random_shapes(impl, rng, dtype):
    mod = impl.load(TOPIC)
    for _ in range(2):
        M, N, K = (int(v) for v in torch.randint(1, 80, (3,), generator=rng))
        a, b = _rand(rng, M, K, dtype=dtype), _rand(rng, K, N, dtype=dtype)
        _run(mod, a, b)  # first with a guarded output: a stray store fails here instead of writing past c
        out = mod.matmul(a, b)
        assert out.dtype == dtype, f"matmul of {dtype} inputs must return {dtype}, got {out.dtype}."
        assert_close(out, _reference(a, b), **_tol(dtype), hint=f"matmul is wrong for a ({M}, {K}) @ ({K}, {N}) product in {str(dtype).removeprefix('torch.')}.")

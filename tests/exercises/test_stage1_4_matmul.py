"""Graded tests of stage 1: the tiled matmul kernel (exercises/stage1_kernels/matmul.py).

Every result is compared, element by element, with a float64 product of the
same inputs. Each test aims at one usual mistake, and says which in its message:
too few K steps, no mask on the K tail, no mask on the store, ignoring the
strides (of a, b, and of c: one test writes into a transposed view), summing in
float16, not moving the pointers along K.

c is always a view in the middle of a larger tensor filled with a sentinel (a
guard region), so a store outside c fails with a sentence instead of
corrupting memory; in the interpreter, ``memcheck`` names any load or store
outside a, b or c before it happens. Block sizes are fixed (32) where a test
depends on them, so that the shapes below are known to straddle tile edges.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close, assert_guards_intact, guarded, guarded_empty, tolerance
from llm_course.grading.memcheck import memcheck

TOPIC = "stage1_kernels/matmul"
BLOCKS = dict(block_m=32, block_n=32, block_k=32, group_size_m=4)
MARGIN = 32  # rows and columns of guard around views: at least a block, so stray accesses stay inside

matmul_exercise = pytest.mark.exercise("matmul_kernel", stage=1, points=5, title="Triton: tiled matmul kernel")


@pytest.fixture(autouse=True)
def _memcheck():
    """In the interpreter: a load or store outside the kernel's tensors fails, named, before it happens."""
    with memcheck(hint="mask rows with offs_m < M, columns with offs_n < N and the K tail with k < K, and build every address from the strides."):
        yield


def _tol(dtype: torch.dtype) -> dict:
    """float32 on a GPU goes through TF32 tensor cores in tl.dot by default; elsewhere it is exact float32."""
    return tolerance("tf32" if dtype == torch.float32 and has_gpu() else dtype)


def _rand(rng, *shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=rng).to(dtype).to(get_device())


def _reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.double().cpu() @ b.double().cpu()


def _run(mod, a, b, *, transposed_c=False, hint=None) -> torch.Tensor:
    """Launch the kernel with 32x32x32 blocks into a guarded view c; fail if anything around c was written.

    With ``transposed_c``, c is the transpose of a guarded (N, M) tensor: stride_cm = 1 and
    stride_cn = M + 2 * MARGIN.
    """
    M, N = a.shape[0], b.shape[1]
    if transposed_c:
        c_t = guarded_empty((N, M), a.dtype, a.device, name="c.T", margin=MARGIN)
        c, guard = c_t.T, c_t
    else:
        c = guard = guarded_empty((M, N), a.dtype, a.device, name="c", margin=MARGIN)
    mod.launch_matmul(a, b, c, **BLOCKS)
    assert_guards_intact(guard, hint=hint or (
        f"mask the store with offs_m < M and offs_n < N (M = {M}, N = {N}), and address c with its strides stride_cm and stride_cn."
    ))  # fmt: skip
    return c


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
def test_output_is_a_transposed_view(impl, rng):
    mod = impl.load(TOPIC)
    M, N, K = 40, 36, 50
    a, b = _rand(rng, M, K), _rand(rng, K, N)
    hint = f"c is a transposed view here (stride_cm = 1, stride_cn = {M + 2 * MARGIN}): store at c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, never assuming stride_cn = 1."
    with memcheck(hint=hint):
        out = _run(mod, a, b, transposed_c=True, hint=hint)
    assert_close(out, _reference(a, b), **_tol(a.dtype), hint=hint)


@matmul_exercise
def test_k_tail_reads_nothing_past_k(impl, rng):
    mod = impl.load(TOPIC)
    M, N, K = 32, 32, 45
    a = guarded(_rand(rng, M, K), "a", margin=MARGIN, fill=float("nan"))  # NaN all around the values
    b = guarded(_rand(rng, K, N), "b", margin=MARGIN, fill=float("nan"))
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

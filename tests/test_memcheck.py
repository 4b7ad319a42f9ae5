"""The graded tests' safety nets: memcheck, guard regions, and mistake diagnoses.

``memcheck`` is checked with tiny kernels written wrong on purpose: each
out-of-bounds load or store must fail with a sentence that names the kernel,
the program, the pointer argument and how far it went, before the store
happens; right kernels, and masked-off lanes that point anywhere, must pass.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.device import configure_triton
from llm_course.grading.checks import assert_guards_intact, guarded, guarded_empty, which_mistake
from llm_course.grading.memcheck import OutOfBounds, memcheck, memcheck_status

configure_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

needs_memcheck = pytest.mark.skipif(not memcheck_status()[0], reason=f"memcheck is off here: {memcheck_status()[1]}")


@triton.jit
def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, MASK_LOAD: tl.constexpr, MASK_STORE: tl.constexpr):
    """y[i] = x[i]; the masks can be left out on purpose."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if MASK_LOAD:
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    else:
        x = tl.load(x_ptr + offs)
    if MASK_STORE:
        tl.store(y_ptr + offs, x, mask=offs < n)
    else:
        tl.store(y_ptr + offs, x)


@triton.jit
def rows_kernel(x_ptr, y_ptr, x_row_stride, y_row_stride, n_cols, BLOCK: tl.constexpr):
    """Copy row by row, with the column mask left out: reads past each row's end."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * x_row_stride + cols)
    tl.store(y_ptr + row * y_row_stride + cols, x, mask=cols < n_cols)


@triton.jit
def shifted_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """Reads x[i - 3]: before the start of x for the first three lanes."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs - 3, mask=offs < n, other=0.0)
    tl.store(y_ptr + offs, x, mask=offs < n)


@triton.jit
def where_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """A pointer chosen with tl.where from two arguments, loaded in 2-D; stores past the end of y."""
    offs = tl.arange(0, BLOCK)
    p = tl.where(offs < n, x_ptr + offs, y_ptr + offs)
    x = tl.load(p[:, None] + tl.zeros((1, 2), dtype=tl.int32), mask=offs[:, None] < n)
    tl.store(y_ptr + offs * 2, tl.sum(x, axis=1))


def _message(fn) -> str:
    with pytest.raises(OutOfBounds) as info:
        with memcheck():
            fn()
    return str(info.value)


@needs_memcheck
def test_an_unmasked_load_is_named():
    x, y = torch.randn(100), torch.zeros(100)
    msg = _message(lambda: copy_kernel[(2,)](x, y, 100, BLOCK=64, MASK_LOAD=False, MASK_STORE=True))
    assert msg.startswith("copy_kernel (program 1, test_memcheck.py line "), msg
    assert "the load through x_ptr reads 28 elements past the end of x (x has 100 elements" in msg, msg
    assert msg.endswith("is the load masked?"), msg


@needs_memcheck
def test_an_unmasked_store_fails_before_it_writes():
    x = torch.randn(100)
    y = guarded_empty((100,), name="y", pad=64)
    msg = _message(lambda: copy_kernel[(2,)](x, y, 100, BLOCK=64, MASK_LOAD=True, MASK_STORE=False))
    assert "the store through y_ptr writes 28 elements past the end of y" in msg, msg
    assert msg.endswith("is the store masked?"), msg
    assert_guards_intact(y)  # nothing was written past y: memcheck stopped the store


@needs_memcheck
def test_right_kernels_pass_and_masked_off_lanes_may_point_anywhere():
    x, y = torch.randn(100), torch.zeros(100)
    with memcheck():
        copy_kernel[(2,)](x, y, 100, BLOCK=64, MASK_LOAD=True, MASK_STORE=True)  # lanes 100..127 masked off
    assert torch.equal(x, y)


@needs_memcheck
def test_reading_between_the_rows_of_a_view_is_named():
    wide = torch.randn(6, 12)
    x, y = wide[:5, :7], torch.zeros(5, 7)  # rows 12 apart, 7 long
    msg = _message(lambda: rows_kernel[(5,)](x, y, 12, 7, 7, BLOCK=8))
    assert "program 0" in msg and "the load through x_ptr reads 1 element between the rows of x" in msg, msg
    assert "strides (12, 1)" in msg, msg


@needs_memcheck
def test_reading_before_the_start_is_named():
    x, y = torch.randn(10), torch.zeros(10)
    msg = _message(lambda: shifted_kernel[(1,)](x, y, 10, BLOCK=16))
    assert "reads 3 elements before the start of x" in msg, msg


@needs_memcheck
def test_the_pointer_is_followed_through_where_and_broadcasts():
    x, y = torch.randn(8), torch.zeros(16)
    msg = _message(lambda: where_kernel[(1,)](x, y, 8, BLOCK=16))
    assert "the store through y_ptr writes" in msg and "past the end of y" in msg, msg


@needs_memcheck
def test_the_hint_of_the_innermost_block_is_given_and_the_interpreter_is_restored():
    from triton.runtime import interpreter

    before = (interpreter.interpreter_builder.create_masked_load, interpreter.GridExecutor.__call__)
    x, y = torch.randn(100), torch.zeros(100)
    with pytest.raises(OutOfBounds, match="mask it with offs < n$"):
        with memcheck(hint="outer hint"):
            with memcheck(hint="mask it with offs < n"):
                copy_kernel[(2,)](x, y, 100, BLOCK=64, MASK_LOAD=False, MASK_STORE=True)
    after = (interpreter.interpreter_builder.create_masked_load, interpreter.GridExecutor.__call__)
    assert after == before


def test_memcheck_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("LLM_COURSE_MEMCHECK", "0")
    assert memcheck_status() == (False, "turned off by LLM_COURSE_MEMCHECK=0")
    x, y = torch.randn(100), guarded_empty((100,), name="y", pad=64)
    with memcheck():
        copy_kernel[(2,)](x, y, 100, BLOCK=64, MASK_LOAD=True, MASK_STORE=True)
    assert torch.equal(x, y)


# --- guard regions -------------------------------------------------------------------------------


def test_guards_name_a_store_past_the_end():
    y = guarded_empty((10,), name="y", pad=16)
    torch.as_strided(y, (13,), (1,)).fill_(0.0)  # 3 elements too many, as an unmasked store would
    with pytest.raises(AssertionError, match=r"^your kernel wrote past the end of `y`: is the store masked\? \(the 3 elements right after it changed; y has 10\)$"):
        assert_guards_intact(y)


def test_guards_name_a_store_before_the_start_and_accept_the_right_one():
    x = guarded(torch.arange(6.0), "x", pad=8)
    assert_guards_intact(x)
    torch.as_strided(x, (2,), (1,), x.storage_offset() - 2).fill_(1.0)
    with pytest.raises(AssertionError, match="^your kernel wrote before the start of `x`"):
        assert_guards_intact(x)


def test_guards_around_a_2d_view_name_the_row_and_column():
    c = guarded_empty((4, 5), name="c", margin=3, fill=float("nan"))
    c.fill_(1.0)
    assert_guards_intact(c)  # NaN guards compare as unchanged
    torch.as_strided(c, (4, 6), c.stride()).fill_(2.0)  # one column too many
    with pytest.raises(AssertionError, match=r"^your kernel wrote outside `c`: .*the first at c\[0, 5\] of a \(4, 5\) tensor"):
        assert_guards_intact(c)


# --- diagnoses -----------------------------------------------------------------------------------


def test_a_mistake_is_named_only_when_the_error_looks_like_it():
    expected = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    swapped = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    mistakes = [(expected.clone(), "a mistake that gives the right answer here"), (lambda: swapped, "swapped")]
    assert which_mistake(swapped + 1e-7, expected, mistakes) == "swapped"
    assert which_mistake(expected + 1e-7, expected, mistakes) is None  # a rounding error is no mistake
    assert which_mistake(expected * 5, expected, mistakes) is None  # wrong, but not like any known mistake

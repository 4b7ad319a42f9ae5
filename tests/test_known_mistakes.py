"""Known mistakes get their own sentence from the graded tests.

Each test here copies one file of ``solutions/`` into a temporary folder with
one usual mistake written into it, runs a graded test function against that
copy, and checks that the failure says what the mistake is: an unmasked store
or load (named by memcheck, or by the guard regions when memcheck is off), a
causal mask that lets in one future key, RoPE with cos and sin swapped, a
matmul that assumes ``stride_cn == 1``, ``<=`` at the roofline's ridge point.
And the other way round: following the exercise's advice passes, and a
rounding difference is not diagnosed as a conceptual mistake.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from llm_course.grading.adapter import load, repo_root
from llm_course.grading.memcheck import OutOfBounds, memcheck, memcheck_status

ROOT = repo_root()
_graded: dict[str, object] = {}


def graded(name: str):
    """The graded test module tests/exercises/<name>.py."""
    if name not in _graded:
        spec = importlib.util.spec_from_file_location(f"_graded_{name}", ROOT / "tests" / "exercises" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _graded[name] = module
    return _graded[name]


def broken(tmp_path, topic: str, old: str, new: str) -> SimpleNamespace:
    """An ``impl`` whose ``topic`` is the solution with ``old`` replaced by ``new``."""
    source = (ROOT / "solutions" / f"{topic}.py").read_text()
    assert old in source, f"solutions/{topic}.py no longer contains {old!r}: update this test"
    path = tmp_path / f"{topic}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source.replace(old, new))
    return SimpleNamespace(load=lambda t: load(t, tmp_path))


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


needs_memcheck = pytest.mark.skipif(not memcheck_status()[0], reason=f"memcheck is off here: {memcheck_status()[1]}")


@needs_memcheck
def test_an_unmasked_store_is_named(tmp_path):
    impl = broken(tmp_path, "stage1_kernels/add", "tl.store(out_ptr + offsets, x + y, mask=mask)", "tl.store(out_ptr + offsets, x + y)")
    with pytest.raises(OutOfBounds, match=r"^add_kernel \(program 0, add\.py line \d+\): the store through out_ptr writes 24 elements past the end of out"):
        with memcheck():
            graded("test_stage1_1_add").test_last_partial_block(impl, rng(), 1000)


@needs_memcheck
def test_an_unmasked_load_is_named(tmp_path):
    impl = broken(tmp_path, "stage1_kernels/softmax", 'x_row_stride + cols, mask=mask, other=-float("inf"))', "x_row_stride + cols)")
    with pytest.raises(OutOfBounds, match=r"^softmax_kernel \(program 8, softmax\.py line \d+\): the load through x_ptr reads 28 elements past the end of x \(x has 900 elements, shape \(9, 100\)\)"):
        with memcheck():
            graded("test_stage1_2_softmax").test_rows_not_a_power_of_two(impl, rng(), 100)


def test_guard_regions_catch_a_stray_store_without_memcheck(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_MEMCHECK", "0")
    impl = broken(tmp_path, "stage1_kernels/rmsnorm", "(x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)", "(x * rstd * w).to(y_ptr.dtype.element_ty))")
    with pytest.raises(AssertionError, match=r"^your kernel wrote past the end of `y`: mask the store of y with cols < n_cols"):
        with memcheck():  # does nothing here
            graded("test_stage1_3_rmsnorm").test_forward_rows_not_a_power_of_two(impl, rng(), 100)


def test_a_matmul_that_assumes_stride_cn_is_one(tmp_path):
    impl = broken(tmp_path, "stage1_kernels/matmul", "offs_n[None, :] * stride_cn\n", "offs_n[None, :]\n")
    with pytest.raises(AssertionError, match=r"c is a transposed view here \(stride_cm = 1, stride_cn = 104\)"):
        with memcheck():
            graded("test_stage1_4_matmul").test_output_is_a_transposed_view(impl, rng())


def test_a_causal_mask_that_lets_in_one_future_key(tmp_path):
    impl = broken(tmp_path, "stage2_attention/attention", "device=q.device), diagonal=1)", "device=q.device), diagonal=2)")
    with pytest.raises(AssertionError, match="^the causal mask lets in one future key"):
        graded("test_stage2_1_attention").test_causal_attention_matches_definition(impl, rng(), 2, 3, 7, 16)


def test_rope_with_cos_and_sin_swapped(tmp_path):
    impl = broken(tmp_path, "stage2_attention/rope", "(xf * cos.to(xf.dtype) + rotated * sin.to(xf.dtype))", "(xf * sin.to(xf.dtype) + rotated * cos.to(xf.dtype))")
    with pytest.raises(AssertionError, match="^cos and sin are swapped"):
        graded("test_stage2_2_rope").test_apply_rope_per_sequence_positions(impl, rng(), 2, 3, 7, 16)


def test_rope_computed_in_float32_as_advised_passes(tmp_path):
    impl = broken(tmp_path, "stage2_attention/rope", "xf = x.float() if x.dtype != torch.float64 else x", "xf = x.float()")
    tests = graded("test_stage2_2_rope")
    tests.test_apply_rope_per_sequence_positions(impl, rng(), 3, 5, 1, 8)
    tests.test_apply_rope_gradient(impl, rng())


def test_a_rounding_difference_is_not_a_conceptual_mistake(tmp_path):
    # One token (T = 1): "every token got the angles of one position" gives the right answer there,
    # so an output off by 1e-4 must get the general sentence, not that diagnosis.
    impl = broken(tmp_path, "stage2_attention/rope", ".to(x.dtype)\n", ".to(x.dtype) + 1e-4\n")
    with pytest.raises(AssertionError, match=r"^apply_rope differs from x \* cos \+ rotate_half\(x\) \* sin"):
        graded("test_stage2_2_rope").test_apply_rope_per_sequence_positions(impl, rng(), 3, 5, 1, 8)


def test_less_or_equal_at_the_ridge_point(tmp_path):
    impl = broken(tmp_path, "stage0_measure/roofline", 'if intensity < ridge else "compute"', 'if intensity <= ridge else "compute"')
    with pytest.raises(AssertionError, match=r"^at the ridge point itself an op counts as compute-bound"):
        graded("test_stage0_4_roofline").test_bound(impl, rng())

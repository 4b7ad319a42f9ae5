"""Known mistakes get their own sentence from the graded tests.

Each test here copies one file of ``solutions/`` into a temporary folder with
one usual mistake written into it, runs a graded test function against that
copy, and checks that the failure says what the mistake is: an unmasked store
or load (named by memcheck, or by the guard regions when memcheck is off), a
causal mask that lets in one future key, RoPE with cos and sin swapped, a
matmul that assumes ``stride_cn == 1``, ``<=`` at the roofline's ridge point,
flash decoding's splits added without rescaling to a common max, a post-norm
block, GPT-2's embeddings transposed along with its Conv1D weights, cached keys
rotated twice, top-p dropping the token that crosses top_p.
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


# --- stage 3: flash decoding ------------------------------------------------------------------

DECODE = "stage3_models/decode_attention"


def test_decode_splits_combined_without_rescaling(tmp_path):
    impl = broken(tmp_path, DECODE, "w = tl.exp(m - m_max)", "w = tl.where(s_ok, 1.0, 0.0)")
    with pytest.raises(AssertionError, match=r"^the splits are added without rescaling"):
        with memcheck():
            graded("test_stage3_5_decode_attention").test_combine_kernel_rescales_each_split(impl, rng(), 5)


def test_decode_that_ignores_cache_seqlens(tmp_path):
    impl = broken(tmp_path, DECODE, "stop = tl.minimum(start + split_size, tl.minimum(seqlen, S))", "stop = tl.minimum(start + split_size, S)")
    with pytest.raises(AssertionError, match=r"^the output is attention over every slot of the cache, the unfilled ones included"):
        with memcheck():
            graded("test_stage3_5_decode_attention").test_cache_seqlens_stop_each_row(impl, rng())


def test_decode_with_query_head_h_on_kv_head_h_modulo_hkv(tmp_path):
    impl = broken(tmp_path, DECODE, "heads = h_kv * GROUP + offs_g", "heads = offs_g * Hkv + h_kv")
    with pytest.raises(AssertionError, match=r"^query head h is paired with kv head h % Hkv"):
        with memcheck():
            graded("test_stage3_5_decode_attention").test_grouped_query_heads(impl, rng(), 8, 2)


def test_decode_without_the_scale(tmp_path):
    impl = broken(tmp_path, DECODE, "s = tl.dot(q, tl.trans(k)) * scale", "s = tl.dot(q, tl.trans(k))")
    with pytest.raises(AssertionError, match=r"^the scores are not scaled"):
        with memcheck():
            graded("test_stage3_5_decode_attention").test_scale(impl, rng())


# --- stage 3: block, GPT-2 weights, KV cache, sampling ---------------------------------------


def test_a_post_norm_block(tmp_path):
    impl = broken(tmp_path, "stage3_models/block", "    h = x + attn(ln_1(x), **attn_kwargs)  # (B, T, C): attention branch, then the residual\n"
                  "    return h + mlp(ln_2(h))", "    h = ln_1(x + attn(x, **attn_kwargs))\n    return ln_2(h + mlp(h))")  # fmt: skip
    with pytest.raises(AssertionError, match=r"^the norms are after the residual additions \(post-norm\)"):
        graded("test_stage3_1_block").test_gpt2_block(impl, rng(), 2, 7)


def test_a_block_whose_mlp_reads_x(tmp_path):
    impl = broken(tmp_path, "stage3_models/block", "return h + mlp(ln_2(h))", "return h + mlp(ln_2(x))")
    with pytest.raises(AssertionError, match=r"^the MLP reads x instead of h"):
        graded("test_stage3_1_block").test_qwen2_block_passes_positions_and_padding_to_attention(impl, rng())


def test_gpt2_weights_with_every_matrix_transposed(tmp_path):
    impl = broken(tmp_path, "stage3_models/weights", "if name.endswith(conv1d):", "if tensor.dim() == 2:")
    with pytest.raises(AssertionError, match=r"^transformer\.wte\.weight is transposed, but only the weights of the four Conv1D layers"):
        graded("test_stage3_2_weights").test_model_state_dict_with_prefix_and_head(impl, rng())


def test_gpt2_weights_without_the_tied_head(tmp_path):
    impl = broken(tmp_path, "stage3_models/weights", 'out["lm_head.weight"] = out["transformer.wte.weight"]', "pass")
    with pytest.raises(AssertionError, match=r"^lm_head\.weight is missing: GPT-2's output head is tied to the token embedding"):
        graded("test_stage3_2_weights").test_original_openai_checkpoint(impl, rng())


def test_a_kv_cache_whose_keys_are_rotated_twice(tmp_path):
    impl = broken(tmp_path, "stage3_models/kv_cache", "    y = ops.attention(q, k_cache[:, :, : pos + 1],",
                  "    cs, sn = attn.rotary_emb(torch.arange(pos + 1))\n    y = ops.attention(q, ops.apply_rope(k_cache[:, :, : pos + 1], cs, sn),")  # fmt: skip
    with pytest.raises(AssertionError, match=r"^the cached keys are rotated again when they are read"):
        graded("test_stage3_3_kv_cache").test_decode_after_a_prompt(impl, rng())


def test_a_kv_cache_that_reads_unwritten_slots(tmp_path):
    impl = broken(tmp_path, "stage3_models/kv_cache", "ops.attention(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1], causal=False)",
                  "ops.attention(q, k_cache, v_cache, causal=False)")  # fmt: skip
    tests = graded("test_stage3_3_kv_cache")
    with pytest.raises(AssertionError, match=r"^attention reads every slot of the cache, also those not written yet"):
        tests.test_decode_from_an_empty_cache(impl, rng(), 4, 2)
    with pytest.raises(AssertionError, match=r"^the output has NaN: a slot that was not written yet"):
        tests.test_unwritten_slots_hold_nan(impl, rng())


def test_top_p_that_drops_the_crossing_token(tmp_path):
    impl = broken(tmp_path, "stage3_models/sampling", "        remove = before >= top_p\n", "        remove = (before + probs) > top_p\n")
    with pytest.raises(AssertionError, match=r"^top-p drops the token that crosses top_p"):
        graded("test_stage3_4_sampling").test_top_p_boundary_by_hand(impl, rng())


def test_temperature_after_the_softmax(tmp_path):
    impl = broken(tmp_path, "stage3_models/sampling", "    logits = logits.float() / temperature  # (B, V)", "    logits = logits.float()")
    with pytest.raises(AssertionError, match=r"^the temperature has no effect: divide the logits by it before the softmax"):
        graded("test_stage3_4_sampling").test_temperature_alone(impl, rng(), 0.6)

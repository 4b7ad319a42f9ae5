"""Known mistakes get their own sentence from the graded tests.

Each test here copies one file of ``solutions/`` into a temporary folder with
one usual mistake written into it, runs a graded test function against that
copy, and checks that the failure says what the mistake is: an unmasked store
or load (named by memcheck, or by the guard regions when memcheck is off), a
causal mask that lets in one future key, RoPE with cos and sin swapped, a
matmul that assumes ``stride_cn == 1``, ``<=`` at the roofline's ridge point,
flash decoding's splits added without rescaling to a common max, a post-norm
block, GPT-2's embeddings transposed along with its Conv1D weights, cached keys
rotated twice, top-p dropping the token that crosses top_p; packed blocks that do not
overlap, a warm-up from 0, Adam's L2 instead of decoupled weight decay, gradient
accumulation averaged per micro-batch, cross-entropy without the max subtracted.
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


# --- stage 4: packing, schedule, AdamW, gradient accumulation ----------------------------------


def test_packing_with_blocks_that_do_not_overlap(tmp_path):
    impl = broken(tmp_path, "stage4_training/packing", "    labels = stream[1 : n * T + 1].view(n, T)",
                  "    blocks = stream[: (stream.numel() // (T + 1)) * (T + 1)].view(-1, T + 1)\n"
                  "    input_ids, labels = blocks[:, :-1], blocks[:, 1:]")  # fmt: skip
    with pytest.raises(AssertionError, match=r"^the blocks do not overlap"):
        graded("test_stage4_1_packing").test_the_docstring_example(impl, rng())


def test_packing_with_labels_not_shifted(tmp_path):
    impl = broken(tmp_path, "stage4_training/packing", "labels = stream[1 : n * T + 1].view(n, T)", "labels = stream[: n * T].view(n, T)")
    with pytest.raises(AssertionError, match=r"^the labels are the inputs themselves"):
        graded("test_stage4_1_packing").test_random_documents(impl, rng(), 4)


def test_packing_without_eos(tmp_path):
    impl = broken(tmp_path, "stage4_training/packing", "for t in (*doc, eos_id)]", "for t in doc]")
    with pytest.raises(AssertionError, match=r"^there is no EOS between the documents"):
        graded("test_stage4_1_packing").test_the_docstring_example(impl, rng())


def test_a_warmup_that_starts_at_zero(tmp_path):
    impl = broken(tmp_path, "stage4_training/schedule", "max_lr * (step + 1) / warmup_steps", "max_lr * step / warmup_steps")
    with pytest.raises(AssertionError, match=r"^the warm-up starts at 0"):
        graded("test_stage4_2_schedule").test_the_boundaries_of_a_long_schedule(impl, rng())


def test_a_cosine_over_the_wrong_range(tmp_path):
    impl = broken(tmp_path, "stage4_training/schedule", "p = (step - warmup_steps) / (max_steps - warmup_steps)", "p = step / max_steps")
    with pytest.raises(AssertionError, match=r"^the cosine runs over steps 0\.\.max_steps"):
        graded("test_stage4_2_schedule").test_every_step_of_a_short_schedule(impl, rng(), 5, 20)


def test_a_cosine_that_rises_after_max_steps(tmp_path):
    impl = broken(tmp_path, "stage4_training/schedule", "    if step >= max_steps:\n        return min_lr\n", "")
    with pytest.raises(AssertionError, match=r"^after max_steps the cosine rises again"):
        graded("test_stage4_2_schedule").test_the_boundaries_of_a_long_schedule(impl, rng())


def test_adamw_without_bias_correction(tmp_path):
    impl = broken(tmp_path, "stage4_training/adamw", "    bias1 = 1.0 - beta1**step  # how much m still underestimates the mean of g\n"
                  "    bias2 = 1.0 - beta2**step", "    bias1 = bias2 = 1.0")  # fmt: skip
    with pytest.raises(AssertionError, match=r"^there is no bias correction"):
        graded("test_stage4_3_adamw").test_matches_torch_adamw(impl, rng(), torch.float64)


def test_adam_l2_instead_of_decoupled_weight_decay(tmp_path):
    impl = broken(tmp_path, "stage4_training/adamw", "        p.mul_(1.0 - lr * weight_decay)  # decoupled weight decay, on the weights\n",
                  "        g = g + weight_decay * p\n")  # fmt: skip
    with pytest.raises(AssertionError, match=r"^the weight decay is added to the gradient \(Adam's L2\)"):
        graded("test_stage4_3_adamw").test_matches_torch_adamw(impl, rng(), torch.float64)


def test_adamw_with_eps_inside_the_sqrt(tmp_path):
    impl = broken(tmp_path, "stage4_training/adamw", "denom = (v / bias2).sqrt_().add_(eps)", "denom = (v / bias2).add_(eps).sqrt_()")
    with pytest.raises(AssertionError, match=r"^eps is inside the square root"):
        graded("test_stage4_3_adamw").test_other_hyperparameters(impl, rng(), (0.8, 0.9), 0.5, 1e-4)


def test_adamw_with_steps_counted_from_zero(tmp_path):
    impl = broken(tmp_path, "stage4_training/adamw", "    bias1 = 1.0 - beta1**step  #", "    step = step + 1\n    bias1 = 1.0 - beta1**step  #")
    with pytest.raises(AssertionError, match=r"^the bias corrections use step \+ 1"):
        graded("test_stage4_3_adamw").test_matches_torch_adamw(impl, rng(), torch.float64)


def test_gradient_accumulation_averaged_per_micro_batch(tmp_path):
    impl = broken(tmp_path, "stage4_training/grad_accum", "loss = loss_sum_fn(model, input_ids, labels) / n_tokens",
                  "loss = loss_sum_fn(model, input_ids, labels) / (labels != IGNORE_INDEX).sum() / len(micro_batches)")  # fmt: skip
    with pytest.raises(AssertionError, match=r"^each micro-batch is averaged over its own tokens"):
        graded("test_stage4_4_grad_accum").test_micro_batches_with_different_token_counts(impl, rng())


def test_gradient_accumulation_without_zeroing(tmp_path):
    impl = broken(tmp_path, "stage4_training/grad_accum", "    model.zero_grad(set_to_none=True)\n", "")
    with pytest.raises(AssertionError, match=r"^the gradient of the previous step is still in \.grad"):
        graded("test_stage4_4_grad_accum").test_one_micro_batch(impl, rng())


# --- stage 4: the cross-entropy kernels --------------------------------------------------------

CE = "stage4_training/cross_entropy"


def test_cross_entropy_without_the_max_subtracted(tmp_path):
    impl = broken(tmp_path, CE, "        m_new = tl.maximum(m, tl.max(x, axis=0))\n", "        m_new = 0.0\n")
    with pytest.raises(AssertionError, match=r"^the loss is inf/NaN for logits around 1e4"):
        with memcheck():
            graded("test_stage4_5_cross_entropy").test_forward_large_logits(impl, rng())


def test_cross_entropy_that_counts_ignored_rows(tmp_path):
    impl = broken(tmp_path, CE, "tl.store(LOSS + row, tl.where(counted, lse - x_t, 0.0))", "tl.store(LOSS + row, lse - x_t)")
    with pytest.raises(AssertionError, match=r"^a row whose target is ignore_index has a loss"):
        with memcheck():
            graded("test_stage4_5_cross_entropy").test_forward_rows(impl, rng(), 97)


def test_cross_entropy_gradient_not_scaled(tmp_path):
    impl = broken(tmp_path, CE, "tl.where(cols == t, 1.0, 0.0)) * scale", "tl.where(cols == t, 1.0, 0.0)) * tl.where(t != ignore_index, 1.0, 0.0)")
    with pytest.raises(AssertionError, match=r"^the gradient is not multiplied by the scale"):
        with memcheck():
            graded("test_stage4_5_cross_entropy").test_backward_rows(impl, rng(), 77, torch.float32)


def test_cross_entropy_gradient_without_the_onehot(tmp_path):
    impl = broken(tmp_path, CE, "g = (tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)) * scale", "g = tl.exp(x - lse) * scale")
    with pytest.raises(AssertionError, match=r"^the gradient is softmax\(x\) \* scale"):
        with memcheck():
            graded("test_stage4_5_cross_entropy").test_backward_rows(impl, rng(), 1000, torch.float32)


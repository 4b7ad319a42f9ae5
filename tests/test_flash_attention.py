"""FlashAttention in Triton (forward and backward) against the float64 PyTorch reference.

On the CPU the kernels run through the Triton interpreter at small sizes (the
interpreter's block sizes are 16, so T = 37 covers several blocks and a ragged
tail). Tolerances, compared with a float64 reference:

* float32: output 1e-5, gradients 1e-4 (atol and rtol) in the interpreter; on a GPU,
  where ``tl.dot`` rounds float32 to TF32 (a 10-bit mantissa), 1e-2 and 2e-2;
* float16: output 2e-3, gradients 1e-2;
* bfloat16 (GPU only): output 2e-2, gradients 5e-2.

The GPU tests run at real sizes in bfloat16 against ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.backends.torch_ops.attention import attention as reference_attention
from llm_course.backends.triton_ops import flash_attention as fa
from llm_course.device import get_device, is_interpreter
from llm_course.grading.checks import assert_close

TOL = {
    torch.float32: (dict(atol=1e-5, rtol=1e-5), dict(atol=1e-4, rtol=1e-4)),
    torch.float16: (dict(atol=2e-3, rtol=2e-3), dict(atol=1e-2, rtol=1e-2)),
    torch.bfloat16: (dict(atol=2e-2, rtol=2e-2), dict(atol=5e-2, rtol=5e-2)),
}
TF32_TOL = (dict(atol=1e-2, rtol=1e-2), dict(atol=2e-2, rtol=2e-2))  # float32 on a GPU: products in TF32


def _tol(dtype):
    return TF32_TOL if dtype == torch.float32 and not is_interpreter() else TOL[dtype]


def _inputs(rng, B, Hq, Hkv, T, S, D, dtype, device=None, scale=1.0):
    device = device or get_device()

    def r(*shape):
        return (torch.randn(*shape, generator=rng, dtype=torch.float32) * scale).to(device=device, dtype=dtype)

    return r(B, Hq, T, D), r(B, Hkv, S, D), r(B, Hkv, S, D), r(B, Hq, T, D)


def _check_fwd_bwd(q, k, v, do, *, causal, window=None, key_padding_mask=None, scale=None, tol=None):
    """Output and dq, dk, dv of the Triton kernels against the float64 reference."""
    out_tol, grad_tol = tol or _tol(q.dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fa.attention(*leaves, causal=causal, scale=scale, window=window, key_padding_mask=key_padding_mask)
    out.backward(do)
    refs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    mask = key_padding_mask
    ref = reference_attention(*refs, causal=causal, scale=scale, window=window, key_padding_mask=mask)
    ref.backward(do.double())
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close(out, ref, hint="the FlashAttention output differs from the reference", **out_tol)
    for name, leaf, r in zip(("dq", "dk", "dv"), leaves, refs):
        assert leaf.grad.shape == r.shape, name
        assert_close(leaf.grad, r.grad, hint=f"{name} differs from the reference", what=name, **grad_tol)


# (B, Hq, Hkv, T, S, D, causal, window)
CASES = [
    pytest.param(1, 2, 2, 37, 37, 16, False, None, id="noncausal-T37"),
    pytest.param(1, 2, 2, 37, 37, 32, True, None, id="causal-T37-D32"),
    pytest.param(2, 4, 2, 5, 67, 16, True, None, id="causal-T5-S67-gqa2"),
    pytest.param(1, 4, 1, 33, 33, 16, True, None, id="causal-gqa4"),
    pytest.param(1, 8, 1, 20, 29, 16, False, None, id="noncausal-gqa8-T20-S29"),
    pytest.param(1, 2, 1, 67, 5, 16, True, None, id="causal-T67-S5-empty-rows"),
    pytest.param(1, 1, 1, 24, 24, 64, True, None, id="causal-D64"),
    pytest.param(1, 2, 2, 50, 50, 16, True, 7, id="causal-window7"),
    pytest.param(1, 2, 1, 40, 45, 16, False, 9, id="noncausal-window9"),
]


@pytest.mark.parametrize("B, Hq, Hkv, T, S, D, causal, window", CASES)
def test_forward_and_backward_fp32(rng, B, Hq, Hkv, T, S, D, causal, window):
    q, k, v, do = _inputs(rng, B, Hq, Hkv, T, S, D, torch.float32)
    _check_fwd_bwd(q, k, v, do, causal=causal, window=window)


@pytest.mark.parametrize("causal", [False, True])
def test_forward_and_backward_fp16(rng, causal):
    q, k, v, do = _inputs(rng, 1, 4, 2, 37, 41, 32, torch.float16)
    _check_fwd_bwd(q, k, v, do, causal=causal)


def test_key_padding_mask_with_a_fully_padded_sequence(rng):
    q, k, v, do = _inputs(rng, 3, 2, 1, 21, 37, 16, torch.float32)
    mask = torch.rand(3, 37, generator=rng) > 0.3
    mask[1] = False  # every key of sequence 1 is padding: its outputs and gradients are 0
    _check_fwd_bwd(q, k, v, do, causal=False, key_padding_mask=mask.to(q.device))


def test_explicit_scale_and_large_scores(rng):
    """Scores in the hundreds: exp() of them overflows unless the running max is subtracted.

    float32 scores of size ~300 carry absolute rounding errors of ~3e-5, hence the looser tolerance.
    """
    q, k, v, do = _inputs(rng, 1, 2, 2, 37, 37, 16, torch.float32, scale=6.0)
    _check_fwd_bwd(q, k, v, do, causal=True, scale=0.4, tol=(dict(atol=5e-4, rtol=5e-4), dict(atol=5e-3, rtol=5e-3)))


def test_lse_is_the_log_sum_exp_of_the_scores_and_minus_inf_for_empty_rows(rng):
    q, k, v, _ = _inputs(rng, 1, 2, 2, 40, 23, 16, torch.float32)
    out, lse = fa.flash_attention_forward(q, k, v, causal=True)
    T, S = 40, 23
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(16)
    i = torch.arange(T).view(T, 1) + (S - T)
    scores = scores.masked_fill(torch.arange(S).view(1, S).to(q.device) > i.to(q.device), float("-inf"))
    expected = torch.logsumexp(scores, dim=-1)  # (B, H, T); -inf for the first T - S rows
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, T)
    assert torch.isneginf(lse[..., : T - S]).all(), "rows that see no key must have lse = -inf"
    assert (out[..., : T - S, :] == 0).all(), "rows that see no key must have output 0"
    assert_close(lse[..., T - S :], expected[..., T - S :], hint="lse differs from logsumexp of the scores")


def test_strided_inputs_are_read_in_place(rng):
    """q, k, v as (B, T, H, D) tensors viewed as (B, H, T, D): no copy needed."""
    q4, k4, v4, do = _inputs(rng, 2, 3, 3, 37, 37, 16, torch.float32)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q4, k4, v4))
    assert not q.is_contiguous()
    _check_fwd_bwd(q, k, v, do.transpose(1, 2).contiguous().transpose(1, 2), causal=True)


def test_outputs_are_stored_heads_split_so_merging_heads_is_a_view(rng):
    """o, dq, dk, dv are (B, H, T, D) stored as (B, T, H, D): ``t.transpose(1, 2)`` is contiguous,
    so a model merges the heads (and autograd returns the gradients to the projection) without a copy."""
    from llm_course.backends.triton_ops.flash_attention_bwd import flash_attention_backward

    q, k, v, do = _inputs(rng, 2, 4, 2, 37, 37, 16, torch.float32)
    o, lse = fa.flash_attention_forward(q, k, v, causal=True)
    assert o.transpose(1, 2).is_contiguous(), f"o has strides {o.stride()}"
    grads = flash_attention_backward(q, k, v, o, lse, do, causal=True)
    for name, g in zip(("dq", "dk", "dv"), grads):
        assert g.transpose(1, 2).is_contiguous(), f"{name} has strides {g.stride()}"


def test_reachable_through_ops_with_the_triton_backend(rng):
    q, k, v, _ = _inputs(rng, 1, 4, 2, 19, 19, 16, torch.float32)
    expected = ops.attention(q, k, v, causal=True)
    with use_backend("triton"):
        got = ops.attention(q, k, v, causal=True)
    assert_close(got, expected, hint="ops.attention under the triton backend differs from the torch backend")


# --- the TMA loads (Hopper and newer) ------------------------------------------------------


def _descriptors_anyway(k, v):
    """``tma_descriptors`` without its checks of the machine: the interpreter runs the TMA branch too.

    The block shape is left wrong on purpose: the autotuner's pre-hook must set it to the config's.
    """
    block = [1, 1, 8, k.shape[-1]]
    return fa.TensorDescriptor.from_tensor(k, block), fa.TensorDescriptor.from_tensor(v, block)


TMA_CASES = [
    pytest.param(2, 4, 2, 5, 67, 16, True, None, id="causal-T5-S67-gqa2"),  # rows past S: zeros from the copy
    pytest.param(1, 8, 1, 20, 29, 16, False, None, id="noncausal-gqa8-T20-S29"),
    pytest.param(1, 2, 1, 67, 5, 16, True, None, id="causal-T67-S5-empty-rows"),
    pytest.param(1, 2, 1, 40, 45, 16, False, 9, id="noncausal-window9"),
]


@pytest.mark.skipif(fa.TensorDescriptor is None, reason="this Triton has no tensor descriptors")
@pytest.mark.parametrize("B, Hq, Hkv, T, S, D, causal, window", TMA_CASES)
def test_the_tma_branch_matches_the_reference(rng, monkeypatch, B, Hq, Hkv, T, S, D, causal, window):
    """The kernel's TMA loads (the path an H100 or H200 takes) give the pointer loads' answer, on any machine."""
    monkeypatch.setattr(fa, "tma_descriptors", _descriptors_anyway)
    q, k, v, do = _inputs(rng, B, Hq, Hkv, T, S, D, torch.float32)
    _check_fwd_bwd(q, k, v, do, causal=causal, window=window)


@pytest.mark.skipif(fa.TensorDescriptor is None, reason="this Triton has no tensor descriptors")
def test_the_tma_branch_with_padding_and_heads_split_layout(rng, monkeypatch):
    """Padding keys' values (NaN here) never reach an output; k, v stored (B, S, H, D) as models make them."""
    monkeypatch.setattr(fa, "tma_descriptors", _descriptors_anyway)
    q, k, v, do = _inputs(rng, 2, 4, 2, 21, 37, 16, torch.float32)
    k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    mask = (torch.rand(2, 37, generator=rng) > 0.3).to(q.device)
    v = v.masked_fill(~mask[:, None, :, None], float("nan"))
    out = fa.attention(q, k, v, causal=False, key_padding_mask=mask)
    ref = reference_attention(q.double(), k.double(), v.double().nan_to_num(), causal=False, key_padding_mask=mask)
    assert_close(out, ref, hint="the TMA branch with a padding mask differs from the reference", **_tol(q.dtype)[0])


def test_tma_needs_16_byte_strides_and_start():
    """Layouts the TMA cannot copy are left to the pointer loads."""
    x = torch.zeros(2, 4, 64, 65)
    assert fa._tma_layout_ok(torch.zeros(2, 4, 64, 64))
    assert fa._tma_layout_ok(torch.zeros(2, 64, 4, 64).transpose(1, 2))  # heads split from a projection
    assert not fa._tma_layout_ok(x[..., :64])  # rows 65 floats apart: not a multiple of 16 bytes
    assert not fa._tma_layout_ok(torch.zeros(2 * 4 * 64 * 64 + 1)[1:].view(2, 4, 64, 64))  # start 4 bytes off
    assert not fa._tma_layout_ok(torch.zeros(2, 1, 64, 64).expand(2, 4, 64, 64))  # a broadcast head (stride 0)
    assert not fa._tma_layout_ok(torch.zeros(2, 4, 64, 64).transpose(2, 3))  # columns, not rows, of stride 1
    if not torch.cuda.is_available():
        assert fa.tma_descriptors(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)) is None


def test_with_tma_loads_the_autotuner_times_only_the_tma_tiles():
    """The prune hook keeps the three measured tiles for the TMA path, every tile otherwise."""
    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 2)]
    ]  # fmt: skip
    kept = fa.prune_fwd_configs(configs, {}, USE_TMA=True)
    assert {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept} == fa.TMA_TILES
    assert fa.prune_fwd_configs(configs, {}, USE_TMA=False) == configs
    assert fa.prune_fwd_configs(configs[:1], {}, USE_TMA=True) == configs[:1]  # the interpreter's single config
    assert fa.prune_fwd_configs(configs[:1] * 2, {}, USE_TMA=True) == configs[:1] * 2  # none of the tiles: all kept


# --- clear errors -----------------------------------------------------------------------


def _qkv(B=1, Hq=2, Hkv=2, T=8, S=8, D=16, dtype=torch.float32):
    dev = get_device()
    return (torch.randn(B, Hq, T, D, device=dev).to(dtype), torch.randn(B, Hkv, S, D, device=dev).to(dtype),
            torch.randn(B, Hkv, S, D, device=dev).to(dtype))  # fmt: skip


@pytest.mark.parametrize("D", [24, 48, 256])
def test_unsupported_head_dim_is_refused(D):
    with pytest.raises(ValueError, match="head dim"):
        fa.attention(*_qkv(D=D))


def test_kv_heads_must_divide_query_heads():
    with pytest.raises(ValueError, match="kv heads"):
        fa.attention(*_qkv(Hq=6, Hkv=4))


def test_mismatched_shapes_are_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="same shape"):
        fa.attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="batch and head dim"):
        fa.attention(q[:1].expand(2, -1, -1, -1), k, v)
    with pytest.raises(ValueError, match="4 dimensions"):
        fa.attention(q[0], k, v)


def test_mismatched_dtypes_are_refused():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="different dtypes"):
        fa.attention(q.half(), k, v)
    with pytest.raises(TypeError, match="dtype"):
        fa.attention(q.double(), k.double(), v.double())


@pytest.mark.skipif(not is_interpreter(), reason="bfloat16 is refused only by the interpreter")
def test_bfloat16_is_refused_in_the_interpreter():
    with pytest.raises(TypeError, match="bfloat16"):
        fa.attention(*_qkv(dtype=torch.bfloat16))


def test_bad_options_are_refused():
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="dropout"):
        fa.attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="window"):
        fa.attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="scale"):
        fa.attention(q, k, v, scale=-1.0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        fa.attention(q, k, v, key_padding_mask=torch.ones(1, 8, device=q.device))  # not bool
    with pytest.raises(ValueError, match="key_padding_mask"):
        fa.attention(q, k, v, key_padding_mask=torch.ones(1, 9, dtype=torch.bool, device=q.device))


# --- GPU: real sizes, bfloat16 -------------------------------------------------------------


def _sdpa(q, k, v, causal):
    import torch.nn.functional as F

    g = q.shape[1] // k.shape[1]
    if g > 1:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1024, 4096])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_bf16_matches_sdpa(rng, T, D, causal):
    """Output and gradients within bf16 rounding of PyTorch's fused attention (both in bf16)."""
    B, H = 2, 8
    q, k, v, do = _inputs(rng, B, H, H, T, T, D, torch.bfloat16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fa.attention(*leaves, causal=causal)
    out.backward(do)
    refs = [t.clone().float().requires_grad_() for t in (q, k, v)]
    ref = _sdpa(*refs, causal)  # float32 reference on the GPU
    ref.backward(do.float())
    assert _rel_err(out, ref) < 1e-2, "bf16 output differs from scaled_dot_product_attention"
    for name, leaf, r in zip(("dq", "dk", "dv"), leaves, refs):
        assert torch.isfinite(leaf.grad).all(), name
        assert _rel_err(leaf.grad, r.grad) < 2e-2, f"bf16 {name} differs from scaled_dot_product_attention"


@pytest.mark.gpu
@pytest.mark.parametrize("Hq, Hkv, T, S, window", [(8, 2, 1000, 1000, None), (8, 1, 300, 1200, None), (4, 4, 1500, 1500, 256)])
def test_gpu_gqa_ragged_and_window(rng, Hq, Hkv, T, S, window):
    """GQA, T != S, ragged lengths and a sliding window at GPU sizes, in fp16, against the float64 reference."""
    q, k, v, do = _inputs(rng, 2, Hq, Hkv, T, S, 64, torch.float16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fa.attention(*leaves, causal=True, window=window)
    out.backward(do)
    refs = [t.double().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*refs, causal=True, window=window)
    ref.backward(do.double())
    assert _rel_err(out, ref) < 2e-3, "fp16 output differs from the reference"
    for name, leaf, r in zip(("dq", "dk", "dv"), leaves, refs):
        assert _rel_err(leaf.grad, r.grad) < 5e-3, f"fp16 {name} differs from the reference"


@pytest.mark.gpu
def test_gpu_hopper_takes_the_tma_path_and_a_misaligned_layout_does_not(rng):
    """On a GPU of compute capability 9 or more, head dim 128 in the usual layouts gets TMA descriptors; both paths agree."""
    q, k, v, _ = _inputs(rng, 2, 8, 2, 1000, 1000, 128, torch.bfloat16)
    tma = torch.cuda.get_device_capability()[0] >= 9 and fa.TensorDescriptor is not None
    assert (fa.tma_descriptors(k, v) is not None) == tma
    base = torch.randn(2, 2, 1000, 129, device=k.device, dtype=k.dtype)
    k2, v2 = base[..., 1:], base.flip(0)[..., :128]  # rows 258 bytes apart: the pointer loads
    k2.copy_(k)
    v2.copy_(v)
    assert fa.tma_descriptors(k2, v2) is None
    assert fa.tma_descriptors(k[..., :64], v[..., :64]) is None  # head dim 64: the pointer loads are faster
    for causal in (False, True):
        fast, slow = fa.attention(q, k, v, causal=causal), fa.attention(q, k2, v2, causal=causal)
        assert _rel_err(fast, slow.float()) < 1e-2, "the TMA and the pointer loads disagree"


@pytest.mark.gpu
def test_gpu_peak_memory_is_far_below_the_score_matrix():
    B, H, T, D = 1, 16, 16384, 128
    dev = get_device()
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    fa.attention(q, k, v, causal=True).backward(do)  # compile and autotune first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fa.attention(q, k, v, causal=True).backward(do)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    scores = B * H * T * T * 2  # one bf16 (T, T) score matrix per head: 8 GiB here
    io = 8 * B * H * T * D * 2  # o, dq, dk, dv, the lse and delta, with room to spare
    assert extra < io, f"peak extra memory {extra / 2**20:.0f} MiB, expected O(T) (< {io / 2**20:.0f} MiB)"
    assert extra < scores / 16


@pytest.mark.gpu
def test_gpu_is_not_slower_than_naive_attention():
    """A sanity check, not a benchmark: the fused kernel beats the reference at T = 4096."""
    from llm_course.measure import benchmark

    q, k, v = (torch.randn(4, 16, 4096, 64, device=get_device(), dtype=torch.bfloat16) for _ in range(3))
    ours = benchmark(lambda: fa.attention(q, k, v, causal=True), warmup=3, reps=10).median_ms
    naive = benchmark(lambda: reference_attention(q, k, v, causal=True), warmup=1, reps=3).median_ms
    assert ours < naive, f"FlashAttention {ours:.2f} ms, naive {naive:.2f} ms"

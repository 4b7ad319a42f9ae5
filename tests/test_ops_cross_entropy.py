"""Cross-entropy and fused linear cross-entropy: the torch references and the Triton kernels.

Against float64 ``F.cross_entropy`` and autograd on fresh random inputs: vocabularies
that are not powers of two (37, 1000, 50257), ignored rows, a custom ``ignore_index``,
both reductions, an incoming gradient other than 1, int32 targets, sliced logits, logits
of +-1e4 and of -inf, rows longer than one block (the online logsumexp, also forced with a
small ``block_size``), the gradient written in place over the logits, and the fused op
chunked so that a chunk does not divide N. float32 and float16 on the CPU (the Triton
interpreter); bfloat16 and the vocabulary of Qwen2 (151,936) on a GPU, where the fused op
must also take much less memory than the logits would.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.device import get_device

BACKENDS = ["torch", "triton"]
CPU_DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=2e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-4)}  # fmt: skip


def _targets(rng, N, V, ignore=(), ignore_index=-100):
    t = torch.randint(0, V, (N,), generator=rng)
    t[list(ignore)] = ignore_index
    return t.to(get_device())


def _rand(rng, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=rng) * scale).to(dtype).to(get_device())


def _reference(logits, targets, ignore_index=-100, reduction="mean", dloss=1.0):
    """float64 loss and d(dloss * loss)/d logits; 0 when no row counts (F.cross_entropy gives NaN there)."""
    x = logits.detach().double().requires_grad_()
    loss = F.cross_entropy(x, targets.long(), ignore_index=ignore_index, reduction=reduction)
    if not (targets != ignore_index).any():
        loss = x.sum() * 0
    (loss * dloss).backward()
    return loss.detach(), x.grad


def _ce(backend, logits, targets, **kwargs):
    x = logits.detach().clone().requires_grad_()
    with use_backend(backend):
        loss = ops.cross_entropy(x, targets, **kwargs)
    return loss, x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(("N", "V"), [(6, 37), (4, 1000), (2, 50257), (1, 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_float64(rng, backend, dtype, N, V, reduction):
    logits = _rand(rng, N, V, dtype=dtype, scale=3.0)
    targets = _targets(rng, N, V, ignore=[0] if N > 1 else [])
    loss, x = _ce(backend, logits, targets, reduction=reduction)
    (loss * 0.75).backward()
    ref, dref = _reference(logits, targets, reduction=reduction, dloss=0.75)
    assert loss.dtype == torch.float32 and loss.shape == () and x.grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), dref, **TOL[dtype])
    assert not x.grad[0].any() or N == 1, "an ignored row got a gradient"


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ignore_index_int32_targets_and_sliced_logits(rng, backend):
    wide = _rand(rng, 8, 130)
    logits = wide[:, :100]  # (8, 100), row stride 130: no copy needed
    targets = _targets(rng, 8, 100, ignore=[1, 5], ignore_index=7).to(torch.int32)
    loss, x = _ce(backend, logits, targets, ignore_index=7)
    loss.backward()
    ref, dref = _reference(logits, targets, ignore_index=7)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), dref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_stay_finite(rng, backend):
    logits = _rand(rng, 4, 300, scale=1e4)
    logits[1, 5:] = float("-inf")  # a row where most of the vocabulary is masked out
    targets = torch.tensor([0, 3, 299, 17], device=logits.device)
    loss, x = _ce(backend, logits, targets)
    loss.backward()
    ref, dref = _reference(logits, targets)
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-3)
    # Both backends keep lse = max + log(sum) in float32 and differentiate as exp(x - lse). At logits
    # of 1e4 its rounding (half an ulp of 1e4: 4.9e-4) moves every probability by up to 0.05% of
    # itself, so this gradient (p / 4) by up to about 1.2e-4 when two logits nearly tie (a rare draw).
    torch.testing.assert_close(x.grad.double(), dref, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_rows_walked_in_many_blocks_and_the_gradient_in_place(rng, dtype):
    """block_size=16 forces the online logsumexp over 63 blocks; grad_scale writes d loss over the logits."""
    from llm_course.backends.triton_ops.cross_entropy import cross_entropy_backward, cross_entropy_rows

    logits = _rand(rng, 5, 1000, dtype=dtype, scale=4.0)
    targets = _targets(rng, 5, 1000, ignore=[2])
    ref_rows = F.cross_entropy(logits.double(), targets, reduction="none")
    ref, dref = _reference(logits, targets, reduction="sum", dloss=0.5)
    rows, lse = cross_entropy_rows(logits, targets, block_size=16)
    torch.testing.assert_close(rows.double(), ref_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits.double(), -1), rtol=1e-5, atol=1e-5)
    scale = torch.tensor([0.5], device=logits.device)
    grad = cross_entropy_backward(logits, targets, lse, scale, block_size=16)
    torch.testing.assert_close(grad.double(), dref, **TOL[dtype])
    in_place = logits.clone()
    rows2, _ = cross_entropy_rows(in_place, targets, grad_scale=scale, block_size=64)
    torch.testing.assert_close(rows2, rows, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(in_place.double(), dref, **TOL[dtype])


@pytest.mark.parametrize("V", [64, 12, 67], ids=["whole-blocks-only", "one-partial-block", "whole-and-partial"])
def test_whole_blocks_and_the_partial_last_block(rng, V):
    """The walks read whole blocks unmasked and the last, partial one masked: each case on its own (block 16)."""
    from llm_course.backends.triton_ops.cross_entropy import cross_entropy_rows

    logits = _rand(rng, 4, V, scale=4.0)
    targets = _targets(rng, 4, V, ignore=[1])
    targets[0] = V - 1  # the last column, in the partial block when there is one
    ref, dref = _reference(logits, targets, reduction="sum", dloss=1.0)
    rows, lse = cross_entropy_rows(logits, targets, block_size=16)
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits.double(), -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows.sum().double(), ref, rtol=1e-5, atol=1e-5)
    in_place = logits.clone()
    cross_entropy_rows(in_place, targets, grad_scale=torch.ones(1, device=logits.device), block_size=16)
    torch.testing.assert_close(in_place.double(), dref, rtol=1e-5, atol=1e-6)


def test_a_target_out_of_range_is_an_error_or_nan(rng):
    logits = _rand(rng, 3, 10)
    targets = torch.tensor([1, 10, 2], device=logits.device)
    with pytest.raises(ValueError, match=r"^cross_entropy: targets\[1\] = 10 is neither a class index in \[0, 10\)"):
        ops.cross_entropy(logits, targets)
    with use_backend("triton"):  # the kernel never reads the targets on the host: NaN, not a wrong number
        assert torch.isnan(ops.cross_entropy(logits, targets))
        assert torch.isnan(ops.cross_entropy(logits, torch.tensor([1, -3, 2], device=logits.device)))


# --- fused linear cross-entropy -----------------------------------------------------------------


def _fused_reference(hidden, weight, targets, bias, reduction, dloss):
    h, w = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    b = None if bias is None else bias.detach().double().requires_grad_()
    logits = h @ w.T + (0 if b is None else b)
    loss = F.cross_entropy(logits, targets, reduction=reduction)
    (loss * dloss).backward()
    return loss.detach(), h.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_linear_cross_entropy_matches_float64(rng, backend, dtype, with_bias, reduction):
    N, C, V = 11, 24, 1000
    hidden = _rand(rng, N, C, dtype=dtype).requires_grad_()
    weight = _rand(rng, V, C, dtype=dtype, scale=0.2).requires_grad_()
    bias = _rand(rng, V, dtype=dtype).requires_grad_() if with_bias else None
    targets = _targets(rng, N, V, ignore=[3, 4])
    with use_backend(backend):
        loss = ops.fused_linear_cross_entropy(hidden, weight, targets, bias, reduction=reduction)
    (loss * 2.0).backward()
    ref, *grefs = _fused_reference(hidden, weight, targets, bias, reduction, 2.0)
    assert loss.dtype == torch.float32 and loss.shape == ()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(loss.double(), ref, **tol)
    for name, t, g in zip(("hidden", "weight", "bias"), (hidden, weight, bias), grefs):
        if t is not None:
            assert t.grad.dtype == dtype, name
            torch.testing.assert_close(t.grad.double(), g, **tol, msg=f"{backend} grad of {name}")


@pytest.mark.parametrize("chunk_rows", [1, 4, 64])
def test_fused_chunks_give_the_same_loss_and_gradients(rng, chunk_rows):
    from llm_course.backends.triton_ops.fused_linear_cross_entropy import fused_linear_cross_entropy_forward

    N, C, V = 13, 16, 257
    hidden, weight, bias = _rand(rng, N, C), _rand(rng, V, C, scale=0.3), _rand(rng, V)
    targets = _targets(rng, N, V, ignore=[0, 12])
    loss, gh, gw, gb = fused_linear_cross_entropy_forward(hidden, weight, targets, bias, grads=(True, True, True),
                                                          chunk_rows=chunk_rows)  # fmt: skip
    ref, *grefs = _fused_reference(hidden, weight, targets, bias, "mean", 1.0)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    for got, g in zip((gh, gw, gb), grefs):
        torch.testing.assert_close(got.double(), g, rtol=1e-4, atol=1e-5)


def test_fused_computes_only_the_gradients_asked(rng):
    N, C, V = 6, 8, 50
    hidden, weight = _rand(rng, N, C), _rand(rng, V, C).requires_grad_()
    targets = _targets(rng, N, V)
    with use_backend("triton"):
        with torch.no_grad():
            no_grad = ops.fused_linear_cross_entropy(hidden, weight, targets)
        loss = ops.fused_linear_cross_entropy(hidden, weight, targets)
    assert not no_grad.requires_grad and loss.requires_grad
    torch.testing.assert_close(no_grad, loss.detach())
    loss.backward()
    _, _, gw, _ = _fused_reference(hidden, weight, targets, None, "mean", 1.0)
    torch.testing.assert_close(weight.grad.double(), gw, rtol=1e-4, atol=1e-5)
    assert hidden.grad is None


# --- GPU: bfloat16, Qwen2's vocabulary, memory -----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_cross_entropy_at_vocab_151936(rng, dtype):
    N, V = 64, 151936
    logits = _rand(rng, N, V, dtype=dtype, scale=2.0)
    targets = _targets(rng, N, V, ignore=[5])
    loss, x = _ce("triton", logits, targets)
    loss.backward()
    ref, dref = _reference(logits, targets)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), dref, **TOL[dtype])


@pytest.mark.gpu
def test_gpu_fused_takes_far_less_memory_than_the_logits(rng):
    N, C, V = 16384, 896, 151936  # Qwen2-0.5B's head; the bfloat16 logits alone are 4.6 GiB
    dev = get_device()
    hidden = _rand(rng, N, C, dtype=torch.bfloat16).requires_grad_()
    weight = _rand(rng, V, C, dtype=torch.bfloat16, scale=0.02).requires_grad_()
    targets = _targets(rng, N, V, ignore=range(0, N, 7))
    peaks, results = {}, {}
    for backend in BACKENDS:
        hidden.grad = weight.grad = None
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        with use_backend(backend):
            loss = ops.fused_linear_cross_entropy(hidden, weight, targets)
        loss.backward()
        torch.cuda.synchronize(dev)
        peaks[backend] = torch.cuda.max_memory_allocated(dev) - base
        results[backend] = (loss.detach().float(), hidden.grad.float(), weight.grad.float())
    logits_bytes = N * V * 2
    assert peaks["triton"] < logits_bytes / 2, f"fused peak {peaks['triton'] / 2**30:.2f} GiB"
    assert peaks["torch"] > logits_bytes, f"naive peak {peaks['torch'] / 2**30:.2f} GiB"
    (l_t, gh_t, gw_t), (l_k, gh_k, gw_k) = results["torch"], results["triton"]
    torch.testing.assert_close(l_k, l_t, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gh_k, gh_t, rtol=5e-2, atol=1e-4)
    torch.testing.assert_close(gw_k, gw_t, rtol=5e-2, atol=1e-4)

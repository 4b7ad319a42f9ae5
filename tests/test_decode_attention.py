"""``ops.decode_attention`` (one query per head against a KV cache) on both backends, against float64.

The reference here is written out in the test: a boolean (B, S_max) mask of the
slots each row sees, built from the op's contract (j < L, j >= L - window, the
padding mask), and a float64 softmax over them. And for caches filled to one
length L, the op must equal the last query of ``ops.attention(..., causal=True)``
over the first L slots.

On the CPU the Triton kernels run through the interpreter at small sizes (its
block is 16 slots, its splits 32 or more: S_max = 45 or 70 covers several blocks,
several splits, ragged ends); ``num_splits`` is forced to 1 and to many to reach
both paths of the launcher. Tolerances against float64: float32 1e-5 (1e-2 on a
GPU, where tl.dot rounds float32 to TF32), float16 2e-3, bfloat16 2e-2.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.backends.triton_ops import decode_attention as dk
from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close

BACKENDS = ["torch", "triton"]


def _tol(dtype):
    if dtype == torch.float16:
        return dict(atol=2e-3, rtol=2e-3)
    if dtype == torch.bfloat16:
        return dict(atol=2e-2, rtol=2e-2)
    return dict(atol=1e-2, rtol=1e-2) if has_gpu() else dict(atol=1e-5, rtol=1e-5)


def _case(rng, B, Hq, Hkv, S, D, seqlens, dtype=torch.float32, unfilled=float("nan"), device=None):
    """q (B, Hq, 1, D), caches (B, Hkv, S, D) whose slots >= cache_seqlens[b] hold ``unfilled``, lengths (B,) int32."""
    device = device or get_device()
    q = torch.randn(B, Hq, 1, D, generator=rng)
    k, v = torch.randn(B, Hkv, S, D, generator=rng), torch.randn(B, Hkv, S, D, generator=rng)
    lengths = torch.tensor(seqlens, dtype=torch.int32)
    unwritten = (torch.arange(S)[None, :] >= lengths[:, None])[:, None, :, None]  # (B, 1, S, 1)
    k, v = k.masked_fill(unwritten, unfilled), v.masked_fill(unwritten, unfilled)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v)) + (lengths.to(device),)


def _seen(seqlens, S, window=None, key_padding_mask=None) -> torch.Tensor:
    """(B, S) bool, on the CPU: the slots each row sees, straight from the contract."""
    j = torch.arange(S)
    rows = []
    for b, L in enumerate(int(x) for x in seqlens):
        row = j < L
        if window is not None:
            row &= j >= L - window
        if key_padding_mask is not None:
            row &= key_padding_mask[b].cpu()
        rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, S, dtype=torch.bool)


def _reference(q, k, v, seen, scale=None):
    """float64 softmax over the seen slots, one (row, head) at a time: (B, Hq, 1, D) on the CPU."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    B, Hq, _, D = q.shape
    G = Hq // k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, Hq, 1, D, dtype=torch.float64)
    for b in range(B):
        idx = seen[b].nonzero().flatten()
        if idx.numel() == 0:
            continue  # a row that sees nothing: 0
        for h in range(Hq):
            s = (k[b, h // G, idx] @ q[b, h, 0]) * scale
            out[b, h, 0] = torch.softmax(s, 0) @ v[b, h // G, idx]
    return out


def _run(backend, *args, **kwargs):
    with use_backend(backend), torch.no_grad():
        return ops.decode_attention(*args, **kwargs)


# --- against the reference ------------------------------------------------------------------------

CASES = [
    # B, Hq, Hkv, S_max, D, seqlens, dtype
    (3, 4, 4, 45, 16, [45, 0, 17], torch.float32),  # GQA ratio 1; full, empty and ragged rows
    (2, 4, 2, 70, 32, [70, 33], torch.float32),  # ratio 2, several splits
    (2, 14, 2, 37, 16, [1, 36], torch.float16),  # ratio 7 (Qwen2-0.5B's 14 / 2), float16
    (1, 2, 1, 19, 64, [19], torch.float16),  # ratio 2, D = 64, fewer slots than a split
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("B", "Hq", "Hkv", "S", "D", "seqlens", "dtype"), CASES)
def test_matches_reference(rng, backend, B, Hq, Hkv, S, D, seqlens, dtype):
    q, k, v, lengths = _case(rng, B, Hq, Hkv, S, D, seqlens, dtype)  # NaN in every unwritten slot
    out = _run(backend, q, k, v, lengths)
    assert out.shape == (B, Hq, 1, D) and out.dtype == dtype
    assert torch.isfinite(out).all(), f"{backend}: NaN from an unwritten slot reached the output"
    assert_close(out, _reference(q, k, v, _seen(seqlens, S)), hint=f"{backend} differs from the reference", **_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [1, 5, 40])
def test_window(rng, backend, window):
    seqlens = [45, 3, 22]
    q, k, v, lengths = _case(rng, 3, 4, 2, 45, 16, seqlens)
    out = _run(backend, q, k, v, lengths, window=window)
    assert_close(out, _reference(q, k, v, _seen(seqlens, 45, window)), hint=f"{backend}, window={window}", **_tol(q.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_padding_mask_with_nan_in_the_padding(rng, backend):
    seqlens = [50, 31]
    q, k, v, lengths = _case(rng, 2, 4, 2, 50, 16, seqlens)
    mask = torch.rand(2, 50, generator=rng) > 0.3
    mask[:, :6] = False  # left padding
    mask[1, :31] = False  # row 1: everything it has written is padding: 0
    k[~mask.to(k.device)[:, None, :, None].expand_as(k)] = float("nan")
    v[~mask.to(v.device)[:, None, :, None].expand_as(v)] = float("inf")
    mask = mask.to(q.device)
    for window in (None, 12):
        out = _run(backend, q, k, v, lengths, window=window, key_padding_mask=mask)
        assert torch.isfinite(out).all(), f"{backend}: a padding slot's NaN or inf reached the output"
        ref = _reference(q, k, v, _seen(seqlens, 50, window, mask))
        assert_close(out, ref, hint=f"{backend}, padding mask, window={window}", **_tol(q.dtype))
        assert not out[1].any(), f"{backend}: a row whose slots are all padding must give 0"


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_int64_lengths(rng, backend):
    seqlens = [29, 12]
    q, k, v, lengths = _case(rng, 2, 2, 1, 29, 32, seqlens)
    out = _run(backend, q, k, v, lengths.long(), scale=0.3)
    assert_close(out, _reference(q, k, v, _seen(seqlens, 29), scale=0.3), hint=f"{backend}, scale=0.3", **_tol(q.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [1, 23, 45])
def test_uniform_lengths_equal_causal_attention_over_the_filled_slots(rng, backend, L):
    """The decode step of a cache filled to L is the last query of causal attention over those L keys."""
    q, k, v, lengths = _case(rng, 2, 6, 2, 45, 16, [L, L])
    out = _run(backend, q, k, v, lengths)
    with use_backend("torch"):
        expected = ops.attention(q, k[:, :, :L], v[:, :, :L], causal=True)  # (B, Hq, 1, D): T = 1, S = L
    torch.testing.assert_close(out, expected, **_tol(q.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lengths_past_the_cache_and_below_zero(rng, backend):
    """A length past S_max counts as S_max, one below 0 as 0 (the values are never checked on the host)."""
    q, k, v, lengths = _case(rng, 3, 2, 1, 20, 16, [20, 0, 7])
    lengths = torch.tensor([25, -3, 7], dtype=torch.int32, device=q.device)
    out = _run(backend, q, k, v, lengths, window=6)
    seen = _seen([20, 0, 7], 20, 6)
    seen[0] = torch.arange(20) >= 25 - 6  # the window counts back from 25
    assert_close(out, _reference(q, k, v, seen), hint=f"{backend}: lengths past S_max or below 0", **_tol(q.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_that_sees_a_nan_gets_nan(rng, backend):
    q, k, v, lengths = _case(rng, 2, 2, 2, 20, 16, [20, 10])
    v[0, :, 4] = float("nan")  # seen by row 0 only
    out = _run(backend, q, k, v, lengths)
    assert torch.isnan(out[0]).any(-1).all() and torch.isfinite(out[1]).all()


# --- the kernels' own paths ------------------------------------------------------------------------


@pytest.mark.parametrize("num_splits", [1, 2, 7])
def test_kernel_one_split_and_many(rng, num_splits):
    """One split (the output written by the first kernel) and many (the combine kernel), lengths that end mid-split."""
    seqlens = [70, 0, 41, 5]
    q, k, v, lengths = _case(rng, 4, 4, 2, 70, 16, seqlens)
    mask = torch.rand(4, 70, generator=rng).to(q.device) > 0.2
    for kwargs in ({}, dict(window=9, key_padding_mask=mask)):
        out = dk.decode_attention_forward(q, k, v, lengths, num_splits=num_splits, **kwargs)
        ref = _reference(q, k, v, _seen(seqlens, 70, kwargs.get("window"), kwargs.get("key_padding_mask")))
        assert_close(out, ref, hint=f"num_splits={num_splits}, {sorted(kwargs)}", **_tol(q.dtype))


def test_kernel_strided_caches_and_head_dim_not_a_power_of_two(rng):
    """Caches laid out (B, S, H, D) and viewed as (B, H, S, D), a query sliced from a larger tensor, D = 24."""
    B, Hq, Hkv, S, D = 2, 4, 2, 40, 24
    seqlens = [40, 13]
    q, k, v, lengths = _case(rng, B, Hq, Hkv, S, D, seqlens)
    k_bshd, v_bshd = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()  # (B, S, Hkv, D)
    q_wide = torch.cat([q, torch.full_like(q, float("nan"))], dim=-1)[..., :D]  # a view with a gap after each row
    out = _run("triton", q_wide, k_bshd.transpose(1, 2), v_bshd.transpose(1, 2), lengths)
    assert_close(out, _reference(q, k, v, _seen(seqlens, S)), hint="strided inputs, D = 24", **_tol(q.dtype))


def test_split_plan_depends_on_shapes_only():
    dev = get_device()
    n, size = dk.split_plan(2, 2, 70, dev)
    assert n * size >= 70 and (n - 1) * size < 70 and n >= 1
    assert dk.split_plan(1, 1, 0, dev)[0] == 1
    for B, Hkv, S in [(1, 2, 4096), (16, 4, 32768), (64, 8, 1024)]:
        n, size = dk.split_plan(B, Hkv, S, dev)
        assert 1 <= n <= dk.MAX_SPLITS and n * size >= S and (n - 1) * size < S


def test_kernel_empty_inputs():
    dev = get_device()
    q = torch.randn(2, 4, 1, 16, device=dev)
    empty = torch.zeros(2, 2, 0, 16, device=dev)
    lengths = torch.zeros(2, dtype=torch.int32, device=dev)
    assert not dk.decode_attention_forward(q, empty, empty, lengths).any()
    full = torch.randn(2, 2, 8, 16, device=dev)
    assert not dk.decode_attention_forward(q, full, full, lengths, num_splits=1).any()  # nothing filled: 0
    assert not dk.decode_attention_forward(q, full, full, lengths, num_splits=4).any()
    assert dk.decode_attention_forward(q[:0], full[:0], full[:0], lengths[:0]).shape == (0, 4, 1, 16)


def test_kernel_refuses_what_it_cannot_run():
    dev = get_device()
    q, k = torch.zeros(1, 2, 1, 512, device=dev), torch.zeros(1, 2, 8, 512, device=dev)
    lengths = torch.tensor([3], device=dev)
    with use_backend("torch"):
        assert ops.decode_attention(q, k, k, lengths).shape == (1, 2, 1, 512)  # the reference has no limit
    with use_backend("triton"), pytest.raises(ValueError, match=r"^decode_attention: head dim 512 is too large for the kernel"):
        ops.decode_attention(q, k, k, lengths)
    if not has_gpu():
        q, k = q[..., :16].bfloat16(), k[..., :16].bfloat16()
        with use_backend("triton"), pytest.raises(TypeError, match=r"^decode_attention: bfloat16 is not supported by the Triton interpreter"):
            ops.decode_attention(q, k, k, lengths)


def test_gradients_come_from_the_reference(rng):
    """Decode is inference; with a gradient asked for, the Triton backend runs the differentiable reference."""
    q, k, v, lengths = _case(rng, 2, 4, 2, 24, 16, [24, 9], unfilled=0.0)
    grads = {}
    for backend in BACKENDS:
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        with use_backend(backend):
            out = ops.decode_attention(*leaves, lengths, window=20)
        out.square().sum().backward()
        grads[backend] = [t.grad for t in leaves]
        assert not leaves[1].grad[1, :, 9:].any(), f"{backend}: an unwritten slot got a gradient"
    for a, b in zip(*grads.values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("option", [dict(window=4), dict(key_padding_mask="mask")])
def test_the_exercise_refuses_what_it_does_not_support(option):
    """The exercises backend falls back to the course's kernel on NotImplementedError: it must come with a sentence."""
    from llm_course.grading import load
    from llm_course.grading.adapter import repo_root

    if not (repo_root() / "solutions").is_dir():
        pytest.skip("solutions/ is not part of this copy of the course")
    mod = load("stage3_models/decode_attention", "solutions")
    q, k = torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 8, 16)
    if "key_padding_mask" in option:
        option = dict(key_padding_mask=torch.ones(1, 8, dtype=torch.bool))
    name = next(iter(option))
    with pytest.raises(NotImplementedError, match=f"{name} is not supported"):
        mod.decode_attention(q, k, k, torch.tensor([3]), **option)


# --- GPU: real sizes, bfloat16 ------------------------------------------------------------------


def _gpu_case(B, Hq, Hkv, S, D, seqlens, seed=0):
    """Like :func:`_case`, made on the GPU (fast at real sizes), in bfloat16, NaN in the unwritten slots."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g, device=dev, dtype=torch.bfloat16)
               for shape in ((B, Hq, 1, D), (B, Hkv, S, D), (B, Hkv, S, D)))  # fmt: skip
    lengths = torch.tensor(seqlens, dtype=torch.int32, device=dev)
    unwritten = (torch.arange(S, device=dev)[None, :] >= lengths[:, None])[:, None, :, None]
    return q, k.masked_fill(unwritten, float("nan")), v.masked_fill(unwritten, float("nan")), lengths


@pytest.mark.gpu
@pytest.mark.parametrize("B, Hq, Hkv", [(1, 14, 2), (16, 28, 4), (4, 8, 8)])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("S", [4096, 32768 + 77])
def test_gpu_bf16_real_sizes(B, Hq, Hkv, D, S):
    dev = torch.device("cuda")
    seqlens = [S - 1 - (b * 997) % S for b in range(B)]
    seqlens[0] = S
    q, k, v, lengths = _gpu_case(B, Hq, Hkv, S, D, seqlens)
    out = _run("triton", q, k, v, lengths)
    assert torch.isfinite(out).all()
    seen = (torch.arange(S, device=dev)[None, :] < lengths[:, None].long())  # (B, S)
    # float32 reference on the GPU (a per-row Python loop in float64 would be slow here)
    G = Hq // Hkv
    qf, kf, vf = (t.float() for t in (q, k, v))
    kf, vf = kf.nan_to_num(0.0), vf.nan_to_num(0.0)
    s = torch.einsum("bhgd,bhsd->bhgs", qf.view(B, Hkv, G, D), kf) / math.sqrt(D)
    s = s.masked_fill(~seen[:, None, None, :], float("-inf"))
    ref = (torch.softmax(s, -1) @ vf).reshape(B, Hq, 1, D)
    assert_close(out, ref, hint=f"bf16 B={B} Hq={Hq} Hkv={Hkv} D={D} S={S}", **_tol(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 1024])
def test_gpu_bf16_matches_sdpa_for_a_full_cache(window):
    import torch.nn.functional as F

    B, Hq, Hkv, S, D = 2, 28, 4, 8192, 128
    q, k, v, lengths = _gpu_case(B, Hq, Hkv, S, D, [S, S])
    out = _run("triton", q, k, v, lengths, window=window)
    lo = 0 if window is None else S - window
    ref = F.scaled_dot_product_attention(q, k[:, :, lo:], v[:, :, lo:], enable_gqa=True)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_gpu_never_synchronizes_with_the_host():
    """Both backends run without a device-to-host copy (what a CUDA graph needs)."""
    dev = torch.device("cuda")
    q, k, v, lengths = _gpu_case(2, 14, 2, 4096, 64, [4000, 17])
    mask = torch.ones(2, 4096, dtype=torch.bool, device=dev)
    for backend in BACKENDS:
        _run(backend, q, k, v, lengths, window=512, key_padding_mask=mask)  # compile and tune first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _run(backend, q, k, v, lengths, window=512, key_padding_mask=mask)
        finally:
            torch.cuda.set_sync_debug_mode("default")


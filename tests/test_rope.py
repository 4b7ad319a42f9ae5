"""Rotary embeddings: the tables (with scaling), the PyTorch reference, the Triton kernel.

The tables are checked against float64 formulas written out here, separately
from ``rotary.py``; the scaling variants against small independent versions of
their published formulas. The Triton kernel (interpreter on the CPU) is checked
forward and backward against the float64 reference: float32 1e-5, float16 2e-3.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.backends.torch_ops.rope import apply_rope, rotate_half
from llm_course.device import get_device, is_interpreter
from llm_course.grading.checks import assert_close
from llm_course.models.components import GroupedQueryAttention
from llm_course.models.components.embeddings.rotary import (
    RotaryEmbedding,
    apply_rope_interleaved,
    deinterleave,
    interleave,
    rope_frequencies,
)

# --- the tables -----------------------------------------------------------------------------


def angles64(positions, inv_freq):
    """(T,) positions, (D/2,) frequencies -> (T, D) angles, float64, each written twice."""
    a = torch.tensor(positions, dtype=torch.float64)[:, None] * torch.as_tensor(inv_freq, dtype=torch.float64)[None, :]
    return torch.cat((a, a), dim=-1)


def inv_freq64(D, base):
    return [base ** (-2 * i / D) for i in range(D // 2)]


@pytest.mark.parametrize("D,base", [(64, 10000.0), (80, 1e6), (32, 500.0)])
def test_table_matches_formula(D, base):
    rope = RotaryEmbedding(D, 64, rope_theta=base)
    pos = [0, 1, 5, 17, 63]
    cos, sin = rope(torch.tensor(pos))
    assert cos.shape == (5, D) and cos.dtype == torch.float32
    a = angles64(pos, inv_freq64(D, base))
    assert_close(cos, a.cos(), hint="cos table is off")
    assert_close(sin, a.sin(), hint="sin table is off")


def test_table_batched_positions_and_growth():
    rope = RotaryEmbedding(16, 8)
    pos = torch.tensor([[0, 1, 2], [7, 8, 30]])  # past max_position: the table grows
    cos, sin = rope(pos)
    assert cos.shape == (2, 3, 16)
    a = angles64(pos.flatten().tolist(), inv_freq64(16, 10000.0)).view(2, 3, 16)
    assert_close(cos, a.cos(), hint="batched cos is off")
    assert_close(sin, a.sin(), hint="batched sin is off")


def test_table_stays_float32_after_half():
    rope = RotaryEmbedding(16, 8).half()
    cos, _ = rope(torch.arange(8))
    assert cos.dtype == torch.float32
    assert_close(cos, angles64(list(range(8)), inv_freq64(16, 10000.0)).cos(), hint="cos after .half() is off")


def test_relative_position_property():
    """q . k after RoPE depends only on the distance between their positions."""
    D = 32
    rope = RotaryEmbedding(D, 256)
    q, k = torch.randn(1, 1, 1, D, dtype=torch.float64), torch.randn(1, 1, 1, D, dtype=torch.float64)

    def score(m, n):
        cm, sm = rope(torch.tensor([m]))
        cn, sn = rope(torch.tensor([n]))
        return (apply_rope(q, cm.double(), sm.double()) * apply_rope(k, cn.double(), sn.double())).sum().item()

    # The cos/sin tables are float32 (as in HF): an angle of ~200 rad carries ~1e-5 rad of
    # rounding, so scores agree to about 1e-5 * |q| |k|, not to float64 precision.
    tol = 1e-4 * float(q.norm() * k.norm())
    for m, n in [(5, 2), (40, 3), (100, 100)]:
        for shift in (1, 17, 120):
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=tol)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


# independent small versions of the scaling formulas (from the papers and HF's configs)


def yarn64(D, base, factor, original, beta_fast=32, beta_slow=1):
    freqs = []
    dims = []
    for r in (beta_fast, beta_slow):  # the pair index that turns r times over the original context
        dims.append(D * math.log(original / (r * 2 * math.pi)) / (2 * math.log(base)))
    low, high = max(math.floor(dims[0]), 0), min(math.ceil(dims[1]), D - 1)
    for i in range(D // 2):
        f = base ** (-2 * i / D)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: extrapolate (keep), 1: interpolate
        freqs.append(f * (1 - ramp) + (f / factor) * ramp)
    return freqs, 0.1 * math.log(factor) + 1.0


def llama3_64(D, base, factor, low_ff, high_ff, original):
    out = []
    for i in range(D // 2):
        f = base ** (-2 * i / D)
        wavelen = 2 * math.pi / f
        if wavelen < original / high_ff:
            out.append(f)
        elif wavelen > original / low_ff:
            out.append(f / factor)
        else:
            smooth = (original / wavelen - low_ff) / (high_ff - low_ff)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


def test_linear_scaling():
    rope = RotaryEmbedding(32, 64, rope_scaling={"type": "linear", "factor": 4.0})
    cos, sin = rope(torch.arange(50))
    a = angles64([p / 4 for p in range(50)], inv_freq64(32, 10000.0))  # position p looks like p / 4
    assert_close(cos, a.cos(), hint="linear scaling is off")
    assert_close(sin, a.sin(), hint="linear scaling is off")


def test_dynamic_ntk_scaling():
    D, M, factor = 32, 16, 2.0
    rope = RotaryEmbedding(D, M, rope_scaling={"rope_type": "dynamic", "factor": factor})
    cos, _ = rope(torch.arange(M))  # within the trained length: unchanged
    assert_close(cos, angles64(list(range(M)), inv_freq64(D, 10000.0)).cos(), hint="dynamic NTK changed short sequences")
    L = 40
    cos, sin = rope(torch.arange(L))
    grown = 10000.0 * (factor * L / M - (factor - 1)) ** (D / (D - 2))
    a = angles64(list(range(L)), inv_freq64(D, grown))
    assert_close(cos, a.cos(), hint="dynamic NTK is off past max_position")
    assert_close(sin, a.sin(), hint="dynamic NTK is off past max_position")
    cos, _ = rope(torch.arange(M))  # back to a short sequence: the original base again
    assert_close(cos, angles64(list(range(M)), inv_freq64(D, 10000.0)).cos(), hint="dynamic NTK did not reset")


@pytest.mark.parametrize("D,base,factor,original", [(64, 10000.0, 4.0, 64), (128, 1e6, 4.0, 32768), (80, 10000.0, 8.0, 256)])
def test_yarn_scaling(D, base, factor, original):
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    rope = RotaryEmbedding(D, original, rope_theta=base, rope_scaling=scaling)
    freqs, mscale = yarn64(D, base, factor, original)
    inv, att = rope_frequencies(D, base, scaling, original)
    assert att == pytest.approx(mscale)
    assert_close(inv, torch.tensor(freqs, dtype=torch.float64), hint="yarn frequencies are off", rtol=1e-5, atol=0)
    pos = [0, 3, 1000, 5000]
    cos, sin = rope(torch.tensor(pos))
    a = angles64(pos, freqs)
    # angles of thousands of radians carry float32 rounding (about 6e-8 of the angle), as in HF
    assert_close(cos, a.cos() * mscale, hint="yarn cos is off", atol=1e-3, rtol=0)
    assert_close(sin, a.sin() * mscale, hint="yarn sin is off", atol=1e-3, rtol=0)


def test_llama3_scaling():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # fmt: skip
    inv, att = rope_frequencies(128, 500000.0, scaling, 131072)
    ref = torch.tensor(llama3_64(128, 500000.0, 8.0, 1.0, 4.0, 8192), dtype=torch.float64)
    assert att == 1.0
    assert_close(inv, ref, hint="llama3 frequencies are off", rtol=1e-5, atol=0)


def test_scaling_dict_errors():
    with pytest.raises(ValueError, match="not supported"):
        RotaryEmbedding(16, 8, rope_scaling={"type": "su", "factor": 2.0})
    with pytest.raises(ValueError, match="factor"):
        RotaryEmbedding(16, 8, rope_scaling={"type": "linear"})
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(15, 8)


# --- the PyTorch reference --------------------------------------------------------------------


def rope_loop64(x, cos, sin):
    """Pair i with i + D/2 and rotate each pair, one at a time, in float64."""
    x, cos, sin = x.double(), cos.double(), sin.double()
    if cos.dim() == 2:
        cos, sin = cos.expand(x.shape[0], *cos.shape), sin.expand(x.shape[0], *sin.shape)
    cos, sin = cos.expand(x.shape[0], -1, -1), sin.expand(x.shape[0], -1, -1)
    out = torch.empty_like(x)
    half = x.shape[-1] // 2
    for i in range(half):
        a, b = x[..., i], x[..., i + half]  # (B, H, T)
        c1, c2, s1, s2 = (t[:, None, :, j] for t, j in ((cos, i), (cos, i + half), (sin, i), (sin, i + half)))
        out[..., i] = a * c1 - b * s1
        out[..., i + half] = b * c2 + a * s2
    return out


def test_rotate_half():
    x = torch.arange(6.0)
    assert rotate_half(x).tolist() == [-3.0, -4.0, -5.0, 0.0, 1.0, 2.0]


def tables(B, T, D, shape, dtype=torch.float32, device="cpu"):
    rope = RotaryEmbedding(D, 64, rope_theta=100.0)
    pos = torch.randint(0, 64, (B, T))
    cos, sin = rope(pos)
    if shape == "TD":
        cos, sin = cos[0], sin[0]
    elif shape == "1TD":
        cos, sin = cos[:1], sin[:1]
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


@pytest.mark.parametrize("shape", ["BTD", "TD", "1TD"])
def test_reference_matches_loop(shape):
    x = torch.randn(2, 3, 5, 12, dtype=torch.float64)
    cos, sin = tables(2, 5, 12, shape, torch.float64)
    assert_close(apply_rope(x, cos, sin), rope_loop64(x, cos, sin), hint="apply_rope differs from the pair loop")


def test_reference_errors():
    x = torch.randn(1, 2, 3, 8)
    cos, sin = tables(1, 3, 8, "TD")
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.randn(1, 2, 3, 7), cos[:, :7], sin[:, :7])
    with pytest.raises(ValueError, match="cos and sin must be"):
        apply_rope(x, cos[:2], sin[:2])
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        apply_rope(x[0], cos, sin)


# --- adjacent pairs (2i, 2i+1): GPT-J and Meta's Llama code --------------------------------------


def rope_pairs_loop64(x, positions, inv_freq):
    """Rotate each adjacent pair (2i, 2i+1) by position * inv_freq[i], one pair at a time, in float64."""
    x = x.double()
    out = torch.empty_like(x)
    for t, p in enumerate(positions):
        for i, f in enumerate(inv_freq):
            c, s_ = math.cos(p * f), math.sin(p * f)
            a, b = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = a * c - b * s_
            out[..., t, 2 * i + 1] = b * c + a * s_
    return out


def test_deinterleave_is_a_permutation_and_interleave_its_inverse():
    x = torch.arange(8.0)
    assert deinterleave(x).tolist() == [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]  # pair (2i, 2i+1) -> (i, i + 4)
    assert interleave(deinterleave(x)).tolist() == x.tolist()
    y = torch.randn(2, 3, 10)
    assert torch.equal(deinterleave(interleave(y)), y)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_interleaved_matches_the_adjacent_pair_loop(backend):
    D, pos = 12, [0, 3, 7, 30, 61]
    rope = RotaryEmbedding(D, 64, rope_theta=100.0)
    cos, sin = rope(torch.tensor(pos))
    x = torch.randn(2, 3, len(pos), D, dtype=torch.float64)
    if backend == "triton":  # the kernel takes float32
        dev = get_device()
        x, cos, sin = x.to(dev, torch.float32), cos.to(dev), sin.to(dev)
    else:
        cos, sin = cos.double(), sin.double()
    with use_backend(backend):
        out = apply_rope_interleaved(x, cos, sin)
    ref = rope_pairs_loop64(x.cpu(), pos, inv_freq64(D, 100.0))
    # float32 tolerance either way: the tables hold float32 angles (as in HF)
    assert_close(out, ref, hint=f"RoPE on adjacent pairs is off ({backend})", atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.double().cpu(), apply_rope(x, cos, sin).double().cpu())  # not the rotate-half pairing


def test_interleaved_and_rotate_half_are_one_rotation_up_to_a_permutation():
    """Scores q . k are the same whichever pairing, once q and k are permuted alike: the permutation is the only difference."""
    D, T = 16, 6
    rope = RotaryEmbedding(D, 64)
    pos = torch.tensor([0, 1, 4, 9, 20, 50])
    cos, sin = (t.double() for t in rope(pos))
    q, k = torch.randn(1, 2, T, D, dtype=torch.float64), torch.randn(1, 2, T, D, dtype=torch.float64)
    scores_pairs = apply_rope_interleaved(q, cos, sin) @ apply_rope_interleaved(k, cos, sin).transpose(-1, -2)
    scores_halves = apply_rope(deinterleave(q), cos, sin) @ apply_rope(deinterleave(k), cos, sin).transpose(-1, -2)
    assert_close(scores_pairs, scores_halves, hint="the two pairings give different attention scores")
    # and each output is the other's, with its features permuted
    assert_close(deinterleave(apply_rope_interleaved(q, cos, sin)), apply_rope(deinterleave(q), cos, sin), hint="not a permutation")


def test_interleaved_layer_equals_rotate_half_layer_with_permuted_weights():
    """Meta's checkpoint layout (adjacent pairs) equals HF's (rotate-half) once each head's q/k rows are permuted."""
    C, Hq, Hkv, D = 48, 6, 2, 8
    torch.manual_seed(0)
    meta = GroupedQueryAttention(C, Hq, Hkv, max_position_embeddings=64, rope_interleaved=True).eval()
    hf = GroupedQueryAttention(C, Hq, Hkv, max_position_embeddings=64).eval()
    perm = deinterleave(torch.arange(D))  # row order of one head in HF's layout
    with torch.no_grad():
        hf.load_state_dict(meta.state_dict())
        for name, H in (("q_proj", Hq), ("k_proj", Hkv)):
            proj = getattr(hf, name)
            proj.weight.copy_(proj.weight.view(H, D, C)[:, perm].reshape(H * D, C))
            proj.bias.copy_(proj.bias.view(H, D)[:, perm].reshape(H * D))
    x = torch.randn(2, 7, C)
    assert_close(meta(x), hf(x), hint="rope_interleaved differs from rotate-half with permuted q/k weights", atol=1e-5, rtol=1e-5)
    same_weights = GroupedQueryAttention(C, Hq, Hkv, max_position_embeddings=64).eval()
    same_weights.load_state_dict(meta.state_dict())
    assert not torch.allclose(meta(x), same_weights(x), atol=1e-3), "rope_interleaved=True changed nothing"


# --- the Triton kernel -------------------------------------------------------------------------

KERNEL_CASES = [
    # B, H, T, D, dtype, table shape
    (2, 3, 7, 64, torch.float32, "BTD"),
    (1, 5, 9, 128, torch.float16, "TD"),
    (2, 7, 3, 80, torch.float32, "1TD"),
    (3, 1, 1, 32, torch.float16, "BTD"),
    (1, 12, 5, 128, torch.float32, "TD"),
]


def _triton():
    from llm_course.backends.triton_ops import rope as triton_rope

    return triton_rope


@pytest.mark.parametrize("B,H,T,D,dtype,shape", KERNEL_CASES)
def test_kernel_forward_backward(B, H, T, D, dtype, shape):
    dev = get_device()
    # a (B, T, H, D) projection viewed as (B, H, T, D): the kernel reads it through its strides
    x = torch.randn(B, T, H, D, dtype=torch.float64).to(device=dev, dtype=dtype).transpose(1, 2).requires_grad_()
    cos, sin = tables(B, T, D, shape, device=dev)
    out = _triton().apply_rope(x, cos, sin)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, rope_loop64(x.detach(), cos, sin), hint="the Triton RoPE forward is off")
    dout = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, dout)
    x64 = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(apply_rope(x64, cos.double(), sin.double()), x64, dout.double())
    assert_close(dx, ref, hint="the Triton RoPE backward is off", what="dx")


def test_kernel_many_heads_several_blocks():
    """More heads than one program takes (BLOCK_H = 16 at D = 256): several head blocks per token."""
    dev = get_device()
    x = torch.randn(1, 37, 2, 256, device=dev)
    cos, sin = tables(1, 2, 256, "TD", device=dev)
    assert_close(_triton().apply_rope(x, cos, sin), rope_loop64(x, cos, sin), hint="head blocks are off")


def test_kernel_general_tables_backward_is_the_transpose():
    """With tables whose halves differ, the backward is still the exact transpose of the forward."""
    dev = get_device()
    x = torch.randn(1, 2, 3, 10, dtype=torch.float64).to(dev, torch.float32).requires_grad_()
    cos, sin = torch.randn(3, 10, device=dev), torch.randn(3, 10, device=dev)
    out = _triton().apply_rope(x, cos, sin)
    dout = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, dout)
    x64 = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(apply_rope(x64, cos.double(), sin.double()), x64, dout.double())
    assert_close(dx, ref, hint="the backward is not the transpose of the forward", what="dx")


def test_kernel_qk_in_one_launch():
    dev = get_device()
    q = torch.randn(2, 6, 5, 64, device=dev, requires_grad=True)
    k = torch.randn(2, 2, 5, 64, device=dev, dtype=torch.float16, requires_grad=True)
    cos, sin = tables(2, 5, 64, "BTD", device=dev)
    q_rot, k_rot = _triton().apply_rope_qk(q, k, cos, sin)
    assert_close(q_rot, rope_loop64(q.detach(), cos, sin), hint="q rotated with k is off")
    assert_close(k_rot, rope_loop64(k.detach(), cos, sin), hint="k rotated with q is off")
    dq_out, dk_out = torch.randn_like(q_rot), torch.randn_like(k_rot)
    dq, dk = torch.autograd.grad((q_rot, k_rot), (q, k), (dq_out, dk_out))
    assert_close(dq, apply_rope(dq_out.double(), cos.double(), -sin.double()), hint="dq is off", what="dq")
    assert_close(dk, apply_rope(dk_out.double(), cos.double(), -sin.double()), hint="dk is off", what="dk")


def test_kernel_through_the_backend_switch():
    dev = get_device()
    x = torch.randn(1, 3, 4, 16, device=dev)
    cos, sin = tables(1, 4, 16, "TD", device=dev)
    with use_backend("triton"):
        out = ops.apply_rope(x, cos, sin)
    assert_close(out, apply_rope(x, cos, sin), hint="ops.apply_rope under the triton backend is off")


def test_kernel_clear_errors():
    dev = get_device()
    K = _triton()
    cos, sin = tables(1, 3, 8, "TD", device=dev)
    with pytest.raises(ValueError, match="even"):
        K.apply_rope(torch.randn(1, 2, 3, 7, device=dev), cos[:, :7], sin[:, :7])
    with pytest.raises(ValueError, match="cos and sin must be"):
        K.apply_rope(torch.randn(1, 2, 4, 8, device=dev), cos, sin)
    with pytest.raises(ValueError, match="last dimension"):
        K.apply_rope(torch.randn(1, 2, 8, 3, device=dev).transpose(2, 3), cos, sin)
    with pytest.raises(ValueError, match="no gradient for cos"):
        K.apply_rope(torch.randn(1, 2, 3, 8, device=dev), cos.clone().requires_grad_(), sin)
    with pytest.raises(TypeError, match="dtype"):
        K.apply_rope(torch.randn(1, 2, 3, 8, device=dev).double(), cos, sin)


@pytest.mark.skipif(not is_interpreter(), reason="the interpreter's bfloat16 trap")
def test_kernel_refuses_bf16_in_interpreter():
    cos, sin = tables(1, 3, 8, "TD")
    with pytest.raises(TypeError, match="bfloat16"):
        _triton().apply_rope(torch.randn(1, 2, 3, 8, dtype=torch.bfloat16), cos, sin)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("H,D", [(28, 128), (4, 128), (40, 80), (16, 64)])
def test_kernel_gpu_real_sizes(dtype, H, D):
    dev = get_device()
    B, T = 2, 2047
    x = torch.randn(B, T, H, D, device=dev, dtype=dtype).transpose(1, 2).requires_grad_()
    rope = RotaryEmbedding(D, 4096, rope_theta=1e6).to(dev)
    cos, sin = rope(torch.arange(T, device=dev))
    out = _triton().apply_rope(x, cos, sin)
    assert_close(out, apply_rope(x.detach().double(), cos.double(), sin.double()), hint="RoPE on the GPU is off")
    dout = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, dout)
    assert_close(dx, apply_rope(dout.double(), cos.double(), -sin.double()), hint="RoPE backward on the GPU is off", what="dx")

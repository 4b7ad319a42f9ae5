"""The attention, position and MLP layers of llm_course/models/components.

Shapes; causality (a future token never changes an earlier output); GQA equals
multi-head attention with its kv weights repeated; the KV cache gives the same
outputs as the full sequence; RoPE makes the layer blind to absolute position;
torch and triton backends agree; dropout is off in eval mode. float32 on the
CPU: tolerance 1e-5 unless stated (the Triton interpreter computes in float32).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course.backends import use_backend
from llm_course.device import get_device
from llm_course.grading.checks import assert_close
from llm_course.models.components import (
    MLP,
    GatedMLP,
    GroupedQueryAttention,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
    TokenEmbedding,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def gqa(C=48, Hq=6, Hkv=2, **kw):
    torch.manual_seed(0)
    return GroupedQueryAttention(C, Hq, Hkv, max_position_embeddings=64, rope_theta=100.0, **kw).eval()


def test_shapes():
    x = torch.randn(2, 7, 48)
    assert MultiHeadAttention(48, 4).eval()(x).shape == (2, 7, 48)
    assert gqa()(x).shape == (2, 7, 48)
    assert gqa(head_dim=10)(x).shape == (2, 7, 48)  # head_dim * heads need not be C (as in some Qwen models)
    assert MLP(48)(x).shape == (2, 7, 48)
    assert GatedMLP(48, 100)(x).shape == (2, 7, 48)
    names = dict(gqa().named_parameters())
    assert set(names) == {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias", "o_proj.weight"}
    assert set(dict(MultiHeadAttention(48, 4).named_parameters())) == {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"}
    assert names["k_proj.weight"].shape == (2 * 8, 48)
    assert gqa().state_dict().keys() == names.keys()  # no rotary tables in checkpoints


@pytest.mark.parametrize("make", [lambda: MultiHeadAttention(48, 4).eval(), lambda: gqa(), lambda: gqa(sliding_window=3)])
def test_causal(make):
    layer = make()
    x = torch.randn(2, 9, 48)
    y = layer(x)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 4, 48)  # change the future of token 4
    y2 = layer(x2)
    assert_close(y2[:, :5], y[:, :5], hint="a later token changed an earlier output", **TOL)
    assert not torch.allclose(y2[:, 5:], y[:, 5:])


def test_sliding_window_forgets_old_tokens():
    layer = gqa(sliding_window=3)
    x = torch.randn(1, 10, 48)
    x2 = x.clone()
    x2[:, :4] = torch.randn(1, 4, 48)  # tokens 0..3: out of the window of tokens 6..9
    assert_close(layer(x2)[:, 6:], layer(x)[:, 6:], hint="a token outside the window changed the output", **TOL)


def test_gqa_equals_mha_with_repeated_kv_weights():
    C, Hq, Hkv, D = 48, 6, 2, 8
    small = gqa(C, Hq, Hkv)
    full = gqa(C, Hq, Hq)  # multi-head: one kv head per query head
    G = Hq // Hkv
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(full, name).load_state_dict(getattr(small, name).state_dict())
        for name in ("k_proj", "v_proj"):
            w = getattr(small, name).weight.view(Hkv, D, C).repeat_interleave(G, dim=0).reshape(Hq * D, C)
            b = getattr(small, name).bias.view(Hkv, D).repeat_interleave(G, dim=0).reshape(Hq * D)
            getattr(full, name).weight.copy_(w)
            getattr(full, name).bias.copy_(b)
    x = torch.randn(2, 7, C)
    assert_close(small(x), full(x), hint="GQA differs from MHA with repeated kv heads", **TOL)


@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_kv_cache_matches_full_sequence(kind):
    layer = MultiHeadAttention(48, 4).eval() if kind == "mha" else gqa(sliding_window=4)
    x = torch.randn(2, 9, 48)
    full = layer(x)
    y1, cache = layer(x[:, :6], use_cache=True)
    y2, cache = layer(x[:, 6:8], past_key_value=cache, use_cache=True)  # two tokens at once
    y3, cache = layer(x[:, 8:], past_key_value=cache, use_cache=True)  # then one
    assert cache[0].shape[2] == 9
    assert_close(torch.cat((y1, y2, y3), dim=1), full, hint="the KV cache changes the outputs", **TOL)


def test_rope_layer_sees_only_relative_positions():
    layer = gqa()
    x = torch.randn(2, 6, 48)
    y = layer(x, position_ids=torch.arange(6))
    y_shifted = layer(x, position_ids=torch.arange(6).expand(2, 6) + 20)
    assert_close(y_shifted, y, hint="shifting all positions changed the output", atol=1e-4, rtol=1e-4)


def test_left_padding_with_position_ids():
    """A left-padded row with its positions starting at its first real token gives the unpadded outputs."""
    layer = gqa()
    x = torch.randn(1, 5, 48)
    ref = layer(x)
    padded = torch.cat((torch.randn(1, 3, 48), x), dim=1)  # 3 padding tokens on the left
    mask = torch.tensor([[False] * 3 + [True] * 5])
    pos = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]])
    y = layer(padded, position_ids=pos, key_padding_mask=mask)
    assert_close(y[:, 3:], ref, hint="left padding changed the outputs", **TOL)


def test_shared_rotary_and_position_embeddings():
    rope = RotaryEmbedding(8, 64, rope_theta=100.0)
    a, b = gqa(rotary=rope), gqa()
    assert a.rotary_emb is rope
    x = torch.randn(1, 4, 48)
    cos, sin = rope(torch.arange(4))
    assert_close(a(x, position_embeddings=(cos, sin)), b(x), hint="precomputed (cos, sin) differ", **TOL)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = MultiHeadAttention(48, 4, attention_dropout=0.5, resid_dropout=0.5)
    ref = MultiHeadAttention(48, 4)
    ref.load_state_dict(layer.state_dict())
    g = gqa(attention_dropout=0.5)
    x = torch.randn(2, 5, 48)
    layer.eval()
    assert_close(layer(x), ref.eval()(x), hint="dropout is on in eval mode", **TOL)
    assert torch.equal(g(x), g(x))
    layer.train()
    g.train()
    assert not torch.allclose(layer(x), ref(x))
    assert not torch.allclose(g(x), g(x))
    mlp = MLP(48, resid_dropout=0.5).eval()
    assert torch.equal(mlp(x), mlp(x))


def test_mlps_match_formulas():
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    m = MLP(16).double()
    ref = F.linear(F.gelu(F.linear(x, m.c_fc.weight, m.c_fc.bias), approximate="tanh"), m.c_proj.weight, m.c_proj.bias)
    assert_close(m(x), ref, hint="GPT-2 MLP is off")
    g = GatedMLP(16, 24).double()
    ref = F.linear(F.silu(F.linear(x, g.gate_proj.weight)) * F.linear(x, g.up_proj.weight), g.down_proj.weight)
    assert_close(g(x), ref, hint="SwiGLU MLP is off")


def test_learned_positions():
    wpe = LearnedPositionalEmbedding(10, 4)
    pos = torch.tensor([[0, 3, 9]])
    assert torch.equal(wpe(pos), wpe.weight[pos])
    assert set(dict(wpe.named_parameters())) == {"weight"}
    with pytest.raises(ValueError, match="0 .. 9"):
        wpe(torch.tensor([10]))


def test_token_embedding():
    wte = TokenEmbedding(11, 6)
    ids = torch.tensor([[3, 0, 3], [10, 5, 3]])
    out = wte(ids)
    assert out.shape == (2, 3, 6) and set(dict(wte.named_parameters())) == {"weight"}
    assert torch.equal(out, wte.weight[ids])
    out.sum().backward()
    assert wte.weight.grad[3].tolist() == [3.0] * 6 and wte.weight.grad[1].abs().sum() == 0  # row 3 used 3 times, row 1 never
    with pytest.raises(IndexError, match="id 11"):
        wte(torch.tensor([11]))


def test_a_config_passes_straight_through():
    """The keys of a Hugging Face config.json (here Qwen2's) are the components' argument names."""
    config = {"hidden_size": 64, "intermediate_size": 112, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128, "rope_theta": 1e6, "rope_scaling": None, "rms_norm_eps": 1e-6,
              "attention_dropout": 0.0, "sliding_window": None, "vocab_size": 50}  # fmt: skip
    keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rope_theta",
            "rope_scaling", "attention_dropout", "sliding_window")  # fmt: skip
    attn = GroupedQueryAttention(**{k: config[k] for k in keys}).eval()
    mlp = GatedMLP(config["hidden_size"], config["intermediate_size"])
    norm = RMSNorm(config["hidden_size"], eps=config["rms_norm_eps"])
    wte = TokenEmbedding(config["vocab_size"], config["hidden_size"])
    h = wte(torch.randint(0, 50, (2, 5)))
    h = h + attn(norm(h))
    assert (h + mlp(norm(h))).shape == (2, 5, 64)
    assert attn.head_dim == 16 and attn.rotary_emb.rope_theta == 1e6
    gpt2 = {"hidden_size": 48, "num_attention_heads": 4, "attention_dropout": 0.1}  # GPT2Config answers to these names
    assert MultiHeadAttention(**gpt2).attention_dropout == 0.1


@pytest.mark.parametrize("make", [lambda: MLP(40), lambda: GatedMLP(40, 72), lambda: TokenEmbedding(30, 40)])
def test_mlps_and_embeddings_agree_between_backends(make):
    """The activations and the lookup go through the backend switch: forward and every gradient agree."""
    dev = get_device()
    torch.manual_seed(0)
    layer = make().to(dev)
    x = torch.randint(0, 30, (2, 5), device=dev) if isinstance(layer, TokenEmbedding) else torch.randn(2, 5, 40, device=dev)
    params = list(layer.parameters())
    grads = {}
    for backend in ("torch", "triton"):
        with use_backend(backend):
            y = layer(x)
            grads[backend] = (y, *torch.autograd.grad(y, params, torch.ones_like(y)))
    tol = "tf32" if dev.type != "cpu" else None
    for got, want in zip(grads["triton"], grads["torch"]):
        assert_close(got, want, hint=f"{type(layer).__name__} differs between torch and triton", dtype=tol)


def test_torch_and_triton_backends_agree():
    """The layers under the Triton kernels (interpreter on the CPU): linear, RoPE and FlashAttention."""
    dev = get_device()
    torch.manual_seed(0)
    x = torch.randn(2, 5, 64, device=dev)  # head size 16 (FlashAttention takes 16, 32, 64, 128)
    layers = (gqa(64, 4, 2), MultiHeadAttention(64, 4).eval(), gqa(64, 4, 1, sliding_window=2), gqa(64, 4, 2, rope_interleaved=True))
    for layer in (layer.to(dev) for layer in layers):
        ref = layer(x)
        with use_backend("triton"):
            out = layer(x)
        assert_close(out, ref, hint=f"{type(layer).__name__} differs between torch and triton", dtype="tf32" if dev.type != "cpu" else None)

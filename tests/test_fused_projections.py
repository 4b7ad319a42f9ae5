"""Fused projections for inference (``llm_course.models.inference``, ``models/components/fused.py``).

The reference is always the same model run unfused: the separate q/k/v (gate/up)
products and two RoPE launches. Fusion must change the number of launches, never the
logits, the parameter names or the state dict.
"""

from __future__ import annotations

import pytest
import torch

from llm_course import ops
from llm_course.backends import use_backend
from llm_course.generation.cuda_graph import GraphedDecoder, greedy_decode
from llm_course.generation.generate import generate
from llm_course.models import GPT2LMHeadModel, Qwen2ForCausalLM, load_model_config
from llm_course.models.components import GatedMLP, GroupedQueryAttention
from llm_course.models.inference import fuse_projections_, is_fused, unfuse_projections_

MODELS = {"gpt2-tiny": GPT2LMHeadModel, "qwen2-tiny": Qwen2ForCausalLM}


def tiny_model(name: str, device="cpu", dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    with torch.device(device):
        model = MODELS[name](load_model_config(name))
    with torch.no_grad():  # nonzero biases, so that a bias in the wrong rows would show
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(std=0.1)
    return model.to(dtype).eval()


def count_calls(monkeypatch, *names):
    counts = dict.fromkeys(names, 0)
    for name in names:
        fn = getattr(ops, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            counts[_name] += 1
            return _fn(*a, **k)

        monkeypatch.setattr(ops, name, wrapped)
    return counts


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_logits_match_unfused_and_state_dict_is_unchanged(name, rng):
    model = tiny_model(name)
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=rng)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(ids)
        n = fuse_projections_(model)
        got = model(ids)
    assert n == (0 if name == "gpt2-tiny" else 2 * model.config.n_layer)  # GPT-2's c_attn is fused already
    assert is_fused(model) == (n > 0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    after = model.state_dict()
    assert list(after) == list(state)
    for k in state:
        assert after[k].shape == state[k].shape and torch.equal(after[k], state[k]), k


def test_fused_path_launches_one_product_and_one_rope_per_group(monkeypatch, rng):
    model = tiny_model("qwen2-tiny")
    L = model.config.n_layer
    ids = torch.randint(0, model.config.vocab_size, (1, 4), generator=rng)
    counts = count_calls(monkeypatch, "linear", "apply_rope")
    with torch.no_grad():
        model(ids)
    assert counts == {"linear": 7 * L + 1, "apply_rope": 2 * L}  # q, k, v, o, gate, up, down; + lm_head
    fuse_projections_(model)
    counts.update(linear=0, apply_rope=0)
    with torch.no_grad():
        model(ids)
    assert counts == {"linear": 4 * L + 1, "apply_rope": L}  # qkv, o, gate_up, down; q and k rotated together


def test_fused_triton_backend_matches_torch_unfused(rng):
    model = tiny_model("qwen2-tiny")
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=rng)
    with torch.no_grad():
        want = model(ids)
        fuse_projections_(model)
        with use_backend("triton"):  # strided views of the fused output into the Triton kernels
            got = model(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("interleaved", [False, True])
def test_fused_attention_component_with_cache_free_rope(interleaved, rng):
    attn = GroupedQueryAttention(32, 4, 2, rope_interleaved=interleaved).eval()
    with torch.no_grad():
        for p in (attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias):
            p.normal_()
    x = torch.randn(2, 5, 32, generator=rng)
    with torch.no_grad():
        want = attn(x)
        attn.fuse_projections()
        got = attn(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_parameters_are_views_of_the_stacked_weight_and_follow_to_and_unfuse():
    mlp = GatedMLP(16, 24).eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        want = mlp(x)
        mlp.fuse_projections()
    fused = mlp.fused_gate_up
    assert fused.is_current() and fused.weight.shape == (48, 16)
    assert mlp.gate_proj.weight.data_ptr() == fused.weight.data_ptr()  # no weight is held twice
    mlp.double()  # new tensors for the projections: the layer stacks them again
    assert mlp.fused_gate_up.weight.dtype == torch.float64 and mlp.fused_gate_up.is_current()
    with torch.no_grad():
        torch.testing.assert_close(mlp(x.double()), want.double(), rtol=1e-5, atol=1e-5)
    unfuse_projections_(mlp)
    assert mlp.fused_gate_up is None
    assert mlp.up_proj.weight.untyped_storage().data_ptr() != mlp.gate_proj.weight.untyped_storage().data_ptr()


def test_training_takes_the_separate_projections_and_updates_reach_the_fused_weight(rng):
    model = tiny_model("qwen2-tiny")
    fuse_projections_(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=rng)
    model.train()
    loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    layer = model.model.layers[0]
    for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj):
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # in place: writes through the views
    model.eval()
    with torch.no_grad():
        got = model(ids)  # fused path, on the updated weights
        unfuse_projections_(model)
        want = model(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # eval mode with autograd on (a notebook's default): the separate projections, gradients reach them
    fuse_projections_(model)
    model.zero_grad()
    model(ids).sum().backward()
    assert layer.self_attn.k_proj.weight.grad is not None


def test_save_pretrained_of_a_fused_model_round_trips(tmp_path, rng):
    from llm_course.models.hf_weights import load_pretrained, save_pretrained

    model = tiny_model("qwen2-tiny")
    fuse_projections_(model)
    save_pretrained(model, tmp_path / "m")  # the projections' weights are views of one stacked tensor
    loaded = load_pretrained(tmp_path / "m").eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_decoder_gives_the_tokens_of_unfused_generation(name, rng):
    model = tiny_model(name)
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=rng)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False  # left padding
    want = generate(model, ids, mask, max_new_tokens=6, use_cache=False)
    dec = GraphedDecoder(model, 2, 12, mode="eager", fuse=True)
    assert is_fused(model) == (name == "qwen2-tiny")
    assert torch.equal(greedy_decode(dec, ids, 6, mask), want)


@pytest.mark.slow
def test_fused_decode_step_traces_as_one_graph(rng):
    """torch.compile must see the whole fused decode step as one graph (no graph break, no fallback)."""
    import torch._dynamo

    model = tiny_model("qwen2-tiny")
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=rng)
    dec = GraphedDecoder(model, 1, 16, mode="eager", warmup=1, fuse=True)
    torch._dynamo.reset()
    dec.mode, dec._compiled = "compile", torch.compile(dec._run_step, backend="eager", fullgraph=True)
    want = generate(model, ids, max_new_tokens=4, use_cache=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = greedy_decode(dec, ids, 4)
    assert torch.equal(got, want)


# --- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["graph", "compile"])
def test_fused_graphed_decode_gives_the_tokens_of_unfused_generate(mode, rng):
    model = tiny_model("qwen2-tiny", device="cuda")
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=rng).cuda()
    want = generate(model, ids, max_new_tokens=10)
    backend, overrides = ("triton", {"linear": "torch", "matmul": "torch"}) if mode == "graph" else ("torch", None)
    dec = GraphedDecoder(model, 2, 19, mode=mode, backend=backend, overrides=overrides, fuse=True)
    assert torch.equal(greedy_decode(dec, ids, 10), want)


@pytest.mark.gpu
def test_fused_bf16_step_logits_match_unfused(rng):
    model = tiny_model("qwen2-tiny", device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=rng).cuda()
    with torch.no_grad(), use_backend("triton"):
        want = model(ids).float()
        fuse_projections_(model)
        got = model(ids).float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)

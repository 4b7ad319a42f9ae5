"""GPT-2 and Qwen2 (llm_course/models/gpt2.py, qwen2.py) and the static KV cache (kv_cache.py).

References: transformers' models built in this process from the same config (parameter
names and shapes; logits after copying their weights, a quick check: the full parity
tests are in test_hf_parity.py); and the model itself without a cache (a cached
generation must give the logits of a full forward pass at every step). float32 on the
CPU, tolerance 1e-5 unless stated.
"""

from __future__ import annotations

import pytest
import torch

from llm_course import ops
from llm_course.backends import registry, use_backend
from llm_course.device import get_device
from torch.testing import assert_close
from llm_course.models import AutoModelForCausalLM, GPT2Config, KVCache, Qwen2Config, load_model_config

TOL = dict(atol=1e-5, rtol=1e-5)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def small(family: str, **over):
    """A model config small enough for many forward passes on a CPU."""
    if family == "gpt2":
        d = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
        return GPT2Config(**{**d, **over})
    d = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, num_kv_heads=2, n_embd=32, intermediate_size=48)
    return Qwen2Config(**{**d, **over})


CONFIGS = {
    "gpt2": small("gpt2"),
    "gpt2-untied": small("gpt2", tie_word_embeddings=False, n_inner=40),
    "qwen2": small("qwen2", tie_word_embeddings=True),
    "qwen2-untied": small("qwen2"),
    "qwen2-window": small("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen2-window-layers": small("qwen2", use_sliding_window=True, sliding_window=5,
                                 layer_types=["sliding_attention", "full_attention"]),
    "qwen2-mqa": small("qwen2", num_kv_heads=1, head_dim=16),
}


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def hf_model(cfg):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(1)
    return transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()


def copy_from_hf(model, hf) -> None:
    """Load transformers' weights into ours: GPT-2's Conv1D (in, out) becomes Linear (out, in)."""
    sd = {k: (v.t() if k.endswith(CONV1D) and model.config.family == "gpt2" else v) for k, v in hf.state_dict().items()}
    model.load_state_dict(sd)


# --- structure --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_and_dtype(name):
    cfg = CONFIGS[name]
    model = build(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    logits = model(ids)
    assert logits.shape == (2, 9, cfg.vocab_size) and logits.dtype == torch.float32
    assert model.double()(ids).dtype == torch.float64


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_names_and_shapes_are_transformers(name):
    cfg = CONFIGS[name]
    ours, hf = build(cfg).state_dict(), hf_model(cfg).state_dict()
    assert sorted(ours) == sorted(hf)
    for k, v in hf.items():
        expected = v.t().shape if cfg.family == "gpt2" and k.endswith(CONV1D) else v.shape
        assert ours[k].shape == expected, k


@pytest.mark.parametrize("name", ["gpt2", "gpt2-untied", "qwen2", "qwen2-untied"])
def test_tied_embeddings_share_one_parameter(name):
    cfg = CONFIGS[name]
    model = build(cfg)
    table = model.transformer.wte.weight if cfg.family == "gpt2" else model.model.embed_tokens.weight
    assert (model.lm_head.weight is table) == cfg.tie_word_embeddings
    n_unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_parameters() == n_unique
    hf = hf_model(cfg)
    assert model.num_parameters() == hf.num_parameters()


@pytest.mark.parametrize("name", ["gpt2-124m", "qwen2-0.5b", "qwen2-7b"])
def test_parameter_counts_of_the_real_sizes(name):
    cfg = load_model_config(name)
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):  # shapes only, no memory
        ours = AutoModelForCausalLM.from_config(cfg)
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg.to_hf_config()))
    assert ours.num_parameters() == hf.num_parameters()
    n = ours.num_parameters()
    assert {"gpt2-124m": 124_439_808, "qwen2-0.5b": 494_032_768, "qwen2-7b": 7_615_616_512}[name] == n
    assert ours.flops_per_token(seq_len=1) > 6 * ours.num_parameters(non_embedding=True)


def test_init_statistics():
    cfg = small("gpt2", n_layer=8, n_embd=64)
    model = build(cfg)
    h0 = model.transformer.h[0]
    assert abs(h0.attn.c_attn.weight.std().item() - 0.02) < 0.003
    assert abs(h0.attn.c_proj.weight.std().item() - 0.02 / (2 * 8) ** 0.5) < 0.001
    assert torch.all(h0.attn.c_attn.bias == 0) and torch.all(h0.ln_1.weight == 1)
    q = build(small("qwen2"))
    assert torch.all(q.model.layers[0].self_attn.q_proj.bias == 0) and torch.all(q.model.norm.weight == 1)


# --- against transformers (a quick check; test_hf_parity.py has the full one) -----------------------


@pytest.mark.parametrize("name", ["gpt2-untied", "qwen2", "qwen2-window"])
def test_logits_match_transformers(name):
    cfg = CONFIGS[name]
    model, hf = build(cfg), hf_model(cfg)
    copy_from_hf(model, hf)
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # what transformers' generate passes
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


# --- the KV cache -------------------------------------------------------------------------------


def cached_logits(model, ids, mask, chunks, max_len=None, poison=True):
    """Feed ids in chunks (sizes in ``chunks``, then one token at a time) through a static cache."""
    B, T = ids.shape
    cache = model.new_kv_cache(B, max_len or T + 3)
    if poison:  # unwritten slots hold NaN: they must never reach an output
        for layer in cache.layers:
            layer.k.fill_(float("nan"))
            layer.v.fill_(float("nan"))
    outs, t = [], 0
    for size in list(chunks) + [1] * T:
        if t >= T:
            break
        size = min(size, T - t)
        step_mask = None if mask is None else mask[:, : t + size]
        outs.append(model(ids[:, t : t + size], attention_mask=step_mask, kv_cache=cache))
        t += size
    return torch.cat(outs, dim=1), cache


# chunks: a prompt, then one token at a time ([5]); token by token ([1]); two chunks, then tokens ([4, 3])
CACHE_CASES = [
    ("gpt2", False, [5]), ("gpt2", True, [4, 3]), ("gpt2-untied", True, [1]),
    ("qwen2", True, [5]), ("qwen2-untied", False, [4, 3]), ("qwen2-mqa", True, [1]),
    ("qwen2-window", False, [5]), ("qwen2-window", True, [4, 3]), ("qwen2-window-layers", True, [1]),
]  # fmt: skip


@pytest.mark.parametrize("name, padded, chunks", CACHE_CASES)
def test_cached_generation_equals_full_forward(name, padded, chunks):
    cfg = CONFIGS[name]
    model = build(cfg)
    B, T = 3, 11
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    mask = None
    if padded:
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1, :3] = 0
        mask[2, :6] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        got, cache = cached_logits(model, ids, mask, chunks)
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
    assert_close(got[real], full[real], **TOL)
    assert cache.length == T and cache.cache_seqlens.tolist() == [T] * B
    assert cache.has_padding == padded


def test_decode_steps_use_decode_attention(monkeypatch):
    """T == 1 with a cache goes through ops.decode_attention over the whole buffer; longer steps through ops.attention."""
    calls = []
    real = registry.implementation

    def spy(op, backend=None):
        calls.append(op)
        return real(op, backend)

    monkeypatch.setattr(registry, "implementation", spy)
    cfg = CONFIGS["qwen2-window"]
    model = build(cfg)
    cache = model.new_kv_cache(2, 16)
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 5)), kv_cache=cache)
        assert calls.count("attention") == cfg.n_layer and "decode_attention" not in calls
        calls.clear()
        model(torch.randint(0, 97, (2, 1)), kv_cache=cache)
        assert calls.count("decode_attention") == cfg.n_layer and "attention" not in calls


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


@pytest.mark.parametrize("name", ["gpt2", "qwen2-window"])
def test_a_decode_step_reads_nothing_back_from_the_device(monkeypatch, name):
    """What makes a decode step capturable in a CUDA graph: no tensor value goes to Python.

    Every way of reading a value (``.item()``, ``bool(t)``, ``int(t)``, ...) raises during
    the step. The embedding op's id check (its one deliberate read, which it skips while a
    graph is being captured or torch.compile traces) is skipped the same way here.
    """
    model = build(CONFIGS[name])
    cache = model.new_kv_cache(2, 12)
    ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        model(ids[:, :6], attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6]), kv_cache=cache)

        def read(self, *args, **kwargs):
            raise AssertionError("a decode step read a tensor's value on the host")

        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        with monkeypatch.context() as m:
            for attr in HOST_READS:
                m.setattr(torch.Tensor, attr, read)
            model(ids[:, 6:7], kv_cache=cache)
            model(ids[:, 7:8], kv_cache=cache)
    assert cache.length == 8 and cache.cache_seqlens.tolist() == [8, 8]


def test_sliding_window_layers_keep_a_ring():
    cfg = CONFIGS["qwen2-window"]  # layer 1 has a window of 4
    cache = build(cfg).new_kv_cache(2, 20)
    assert [layer.ring for layer in cache.layers] == [False, True]
    assert cache.layers[0].k.shape == (2, 2, 20, 8) and cache.layers[1].k.shape == (2, 2, 4, 8)
    full = KVCache(2, 2, 2, 8, 20)
    assert cache.memory_bytes() < full.memory_bytes()
    # a window as long as the cache needs no ring
    assert not any(layer.ring for layer in build(cfg).new_kv_cache(2, 4).layers)


def test_window_longer_than_the_prompt_and_a_chunk_longer_than_the_window():
    cfg = CONFIGS["qwen2-window"]
    model = build(cfg)
    ids = torch.randint(0, 97, (2, 15))
    with torch.no_grad():
        full = model(ids)
        got, _ = cached_logits(model, ids, None, [2, 9])  # the 9-token chunk wraps the 4-slot ring twice
    assert_close(got, full, **TOL)


def test_reset_and_reuse():
    model = build(CONFIGS["gpt2"])
    ids = torch.randint(0, 97, (1, 6))
    cache = model.new_kv_cache(1, 8)
    with torch.no_grad():
        first = model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1]]), kv_cache=cache)
        cache.reset()
        assert cache.length == 0 and not cache.has_padding
        again = model(ids, kv_cache=cache)
    assert_close(again, model(ids), **TOL)
    assert not torch.allclose(first[:, 1:], again[:, 1:])  # the padding moved every position


def test_cache_errors():
    model = build(CONFIGS["gpt2"])
    with pytest.raises(ValueError, match="block_size"):
        model.new_kv_cache(1, 64)
    cache = model.new_kv_cache(1, 4)
    with pytest.raises(ValueError, match="max_len=4"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, S\) = \(1, 2\)"):
        model(torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.ones(1, 3), kv_cache=cache)
    layer = model.transformer.h[0].attn
    with pytest.raises(ValueError, match="kv_cache"):
        layer(torch.randn(1, 1, 32), key_padding_mask=torch.ones(1, 1, dtype=torch.bool), kv_cache=cache.layers[0])
    qwen = build(CONFIGS["qwen2-window"])
    with pytest.raises(ValueError, match="sliding window"):  # a cache made without the model's windows
        qwen(torch.zeros(1, 2, dtype=torch.long), kv_cache=KVCache(2, 1, 2, 8, 16))


def test_input_errors():
    model = build(CONFIGS["qwen2"])
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="block_size=32"):
        build(CONFIGS["gpt2"])(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(TypeError, match="Qwen2Config"):
        type(model)(CONFIGS["gpt2"])


def test_qwen2_past_block_size_under_torch_compile():
    """RoPE extends past block_size; a compiled graph cannot grow the tables. With fullgraph the
    longer input is refused by name (not read past the tables: a device-side assert on a GPU);
    otherwise the growth runs eagerly at a graph break and the logits are those of eager mode."""
    ids = torch.randint(0, 97, (1, 40))
    expected = build(CONFIGS["qwen2"])(ids)
    with pytest.raises(Exception, match="40 positions under torch.compile.*tables cover 32"):
        torch.compile(build(CONFIGS["qwen2"]), backend="eager", fullgraph=True)(ids)
    torch._dynamo.reset()
    model = build(CONFIGS["qwen2"])
    assert_close(torch.compile(model, backend="eager")(ids), expected, **TOL)
    assert model.model.rotary_emb.cos_cached.shape[0] == 40
    torch._dynamo.reset()


# --- training and backends ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_gradients_reach_every_parameter(name):
    model = build(CONFIGS[name]).train()
    ids = torch.randint(0, 97, (2, 8))
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_dropout_only_in_training():
    model = build(small("gpt2", embd_pdrop=0.5, attn_pdrop=0.5, resid_pdrop=0.5))
    ids = torch.randint(0, 97, (1, 8))
    assert torch.equal(model(ids), model(ids))
    model.train()
    assert not torch.equal(model(ids), model(ids))


MODEL_OPS = {
    "gpt2": {"embedding", "add", "layer_norm", "add_layer_norm", "linear", "attention", "qkv_attention", "gelu_tanh",
             "decode_attention"},
    "qwen2": {"embedding", "add", "rms_norm", "add_rms_norm", "linear", "apply_rope", "attention", "silu_mul",
              "decode_attention"},
}


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_the_backend_switch_reaches_every_op(monkeypatch, family):
    """Under use_backend("triton") every op the model runs is asked of the triton backend (run here by the
    torch reference, to stay fast), and the model computes nothing outside the ops it declares."""
    asked = []

    def spy(op, backend=None):
        asked.append((op, backend or registry.get_backend()))
        return registry.implementation.__wrapped__(op, "torch")

    spy.__wrapped__ = registry.implementation
    monkeypatch.setattr(registry, "implementation", spy)
    model = build(CONFIGS[family])
    ids = torch.randint(0, 97, (2, 6))
    with use_backend("triton"), torch.no_grad():
        cache = model.new_kv_cache(2, 8)
        model(ids[:, :5], kv_cache=cache)
        model(ids[:, 5:], kv_cache=cache)
        model(ids)
    assert {op for op, _ in asked} == MODEL_OPS[family]
    assert {backend for _, backend in asked} == {"triton"}


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_torch_and_triton_backends_agree(family):
    over = dict(vocab_size=40, n_layer=1, n_head=2, n_embd=32)  # head_dim 16, the smallest the kernels take
    if family == "qwen2":
        over.update(num_kv_heads=1, use_sliding_window=True, sliding_window=3, max_window_layers=0)
    model = build(small(family, **over)).to(get_device())
    ids = torch.randint(0, 40, (2, 6), device=get_device())
    mask = torch.ones(2, 6, dtype=torch.long, device=get_device())
    mask[0, :2] = 0
    with torch.no_grad():
        ref, _ = cached_logits(model, ids, mask, [4], max_len=7, poison=False)
        with use_backend("triton"):
            got, _ = cached_logits(model, ids, mask, [4], max_len=7, poison=False)
    real = mask.bool()
    assert_close(got[real], ref[real], atol=1e-4, rtol=1e-4)


# --- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_a_decode_step_replays_in_a_cuda_graph(family):
    """The decode step reads only device tensors: captured once, it replays with the right logits."""
    cfg = CONFIGS["gpt2" if family == "gpt2" else "qwen2-window"]
    model = build(cfg).cuda()
    B, T = 2, 12
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    mask = torch.ones(B, T, dtype=torch.long, device="cuda")
    mask[1, :3] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_kv_cache(B, T + 4)
        model(ids[:, :4], attention_mask=mask[:, :4], kv_cache=cache)
        static_ids = ids[:, 4:5].clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm up off the capture (lazy initializations)
            model(static_ids, kv_cache=cache)
        torch.cuda.current_stream().wait_stream(s)
        cache.reset()
        model(ids[:, :4], attention_mask=mask[:, :4], kv_cache=cache)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_ids, kv_cache=cache)
        # capturing ran the step once on the host only: undo its host bookkeeping, replay from slot 4
        cache.length -= 1
        outs = []
        for t in range(4, T):
            static_ids.copy_(ids[:, t : t + 1])
            graph.replay()
            cache.advance_host(1)
            outs.append(static_out.clone())
    got = torch.cat(outs, dim=1)
    real = mask[:, 4:].bool()
    assert_close(got[real], full[:, 4:][real], atol=1e-4, rtol=1e-4)


def test_snapshot_and_restore_leave_no_trace():
    """A step run between snapshot() and restore() (a warm-up before a graph capture) changes no later output."""
    model = build(CONFIGS["qwen2-window"])
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    full_mask = torch.cat((mask, torch.ones(2, 3, dtype=torch.long)), dim=1)
    with torch.no_grad():
        full = model(ids, attention_mask=full_mask)
        cache = model.new_kv_cache(2, 12)
        model(ids[:, :6], attention_mask=mask, kv_cache=cache)
        saved = cache.snapshot()
        for _ in range(2):  # throw-away steps, each from the saved state (the ring's next slot is overwritten)
            model(torch.randint(0, 97, (2, 1)), kv_cache=cache)
            cache.restore(saved)
        got = torch.cat([model(ids[:, t : t + 1], kv_cache=cache) for t in range(6, 9)], dim=1)
    assert_close(got, full[:, 6:], **TOL)


def test_auto_model_factories(tmp_path):
    model = AutoModelForCausalLM.from_name("qwen2-tiny")
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config == load_model_config("qwen2-tiny")
    assert AutoModelForCausalLM.from_name("gpt2-tiny", dtype=torch.float64).lm_head.weight.dtype == torch.float64
    with pytest.raises(TypeError, match="GPT2Config or Qwen2Config"):
        AutoModelForCausalLM.from_config({"family": "gpt2"})
    hf_weights = pytest.importorskip("llm_course.models.hf_weights")
    model = build(CONFIGS["gpt2-untied"])
    hf_weights.save_pretrained(model, tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        assert_close(again(ids), model(ids), **TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["gpt2", "qwen2-window"])
def test_cached_generation_on_the_gpu_in_bfloat16(name, backend):
    cfg = CONFIGS[name]
    over = {"n_head": 2} | ({"num_kv_heads": 1, "head_dim": None} if cfg.family == "qwen2" else {})  # head_dim 16
    cfg = type(cfg)(**({k: v for k, v in cfg.to_dict().items() if k != "family"} | over))
    model = build(cfg).cuda().to(torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (3, 11), device="cuda")
    mask = torch.ones(3, 11, dtype=torch.long, device="cuda")
    mask[1, :4] = 0
    with torch.no_grad(), use_backend(backend):
        full = model(ids, attention_mask=mask).float()
        got, _ = cached_logits(model, ids, mask, [5])
    real = mask.bool()
    assert_close(got.float()[real], full[real], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("name", ["gpt2-tiny", "qwen2-tiny"])
def test_bf16_autocast_trains_on_the_torch_backend(name):
    """Under autocast a bias-free projection returns bfloat16 while the residual stream stays fp32:
    the model must still run (loss and gradients), and the loss must be near fp32's."""
    from llm_course.backends import use_backend
    from llm_course.training.loss import loss_fn

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_name(name)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with use_backend("torch"):
        ref = loss_fn(model, x, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model, x, x)
        loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(loss.detach(), ref.detach(), atol=0.05, rtol=0.01)


@pytest.mark.parametrize("name", ["gpt2-tiny", "qwen2-tiny"])
def test_autocast_trains_on_the_triton_backend(name):
    """The Triton backend under autocast computes its matrix products in autocast's dtype, as the
    torch backend does (float16 here: the interpreter has no bfloat16), with the same loss and gradients."""
    from llm_course.backends import use_backend
    from llm_course.training.loss import fused_loss_fn, loss_fn

    grads = {}
    for backend, fn in (("torch", loss_fn), ("triton", fused_loss_fn)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_name(name)
        x = torch.randint(0, model.config.vocab_size, (2, 16))
        with use_backend(backend), torch.autocast("cpu", dtype=torch.float16):
            loss = fn(model, x, x)
        loss.backward()
        grads[backend] = (loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads["triton"][0], grads["torch"][0], atol=2e-3, rtol=1e-3)
    rel = (grads["triton"][1] - grads["torch"][1]).norm() / grads["torch"][1].norm()
    assert rel < 5e-3, f"{name}: the Triton backend's gradients under autocast differ from torch's by {rel:.1e}"

"""The course's GPT-2 and Qwen2 against ``transformers``: the same logits and the same greedy tokens.

Tiny random ``transformers`` models (several architectures: grouped-query attention 7:1
and 1:1, tied and untied heads, odd widths, rope_theta 1e6, RoPE scaling, a sliding
window) are saved with their own ``save_pretrained`` into a temporary folder, loaded by
``llm_course.models.hf_weights.load_pretrained``, and compared:

* logits in float32 on a left-padded batch (torch backend; Triton's too, at tiny sizes);
* greedy generation, token for token, with and without the KV cache, against
  ``transformers``' ``generate(do_sample=False)``;
* the other direction: a course model written by ``save_pretrained`` and read by
  ``transformers``' ``AutoModelForCausalLM.from_pretrained`` gives the same logits;
* sharded checkpoints written by ``transformers`` (``max_shard_size="50KB"``).

Nothing is downloaded: every model is built from a config.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llm_course.backends import use_backend  # noqa: E402
from llm_course.generation import generate  # noqa: E402
from llm_course.models.hf_weights import load_pretrained, save_pretrained  # noqa: E402

ATOL = RTOL = 1e-5  # float32, the same arithmetic in another order

# name -> (family, HF config kwargs). Widths are not powers of two; head_dim 8 or 12.
HF_CONFIGS = {
    "gpt2-tied": ("gpt2", dict(n_embd=36, n_head=3, n_layer=2, n_inner=None, tie_word_embeddings=True)),
    "gpt2-untied-56": ("gpt2", dict(n_embd=56, n_head=7, n_layer=2, n_inner=72, tie_word_embeddings=False)),
    "qwen2-gqa7-tied-theta1e6": ("qwen2", dict(
        hidden_size=56, num_attention_heads=7, num_key_value_heads=1, head_dim=8, intermediate_size=72,
        num_hidden_layers=2, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen2-mha-untied-linear": ("qwen2", dict(
        hidden_size=72, num_attention_heads=6, num_key_value_heads=6, head_dim=12, intermediate_size=40,
        num_hidden_layers=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    "qwen2-window-yarn": ("qwen2", dict(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=12, intermediate_size=56,
        num_hidden_layers=2, tie_word_embeddings=False, use_sliding_window=True, sliding_window=5,
        max_window_layers=1, max_position_embeddings=64,  # layer 1 has the window, layer 0 not; 64 = 4 x 16
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                         "rope_theta": 10000.0})),
    "qwen2-dynamic": ("qwen2", dict(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=24,
        num_hidden_layers=1, tie_word_embeddings=True, max_position_embeddings=8,  # T=12 > 8: the base grows
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})),
    # for the Triton backend: its FlashAttention kernel takes head_dim 16, 32, 64 or 128
    "gpt2-hd16": ("gpt2", dict(n_embd=48, n_head=3, n_layer=1, n_inner=40, tie_word_embeddings=True)),
    "qwen2-hd16-window": ("qwen2", dict(
        hidden_size=48, num_attention_heads=3, num_key_value_heads=1, head_dim=16, intermediate_size=40,
        num_hidden_layers=2, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4, max_window_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
}  # fmt: skip
TRITON = ("gpt2-hd16", "qwen2-hd16-window")
VOCAB = 61
MAX_POSITIONS = 32


def hf_model(name: str, seed: int = 0):
    """A random transformers model of config ``name``, in eval mode, with weights large enough that
    logits spread (greedy choices are then far from ties) and every norm and bias matters."""
    family, kwargs = HF_CONFIGS[name]
    common = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "gpt2":
        config = transformers.GPT2Config(n_positions=MAX_POSITIONS, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                                         **common, **kwargs)  # fmt: skip
        cls = transformers.GPT2LMHeadModel
    else:
        kwargs = {"max_position_embeddings": MAX_POSITIONS, **kwargs}
        config = transformers.Qwen2Config(**common, **kwargs)
        cls = transformers.Qwen2ForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # a shared (tied) Parameter comes once
            p.add_(torch.randn_like(p) * 0.3)
    return model


def left_padded_batch(T: int = 12, pads=(0, 3, 5), seed: int = 0):
    """ids (B, T) and mask (B, T): row b starts with pads[b] padding tokens (id 0, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(pads), T), generator=g)
    mask = torch.ones(len(pads), T, dtype=torch.long)
    for b, p in enumerate(pads):
        ids[b, :p], mask[b, :p] = 0, 0
    return ids, mask


def hf_logits(model, ids, mask):
    """transformers' logits with the positions its generate() uses: the count of real tokens before each."""
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


def assert_close_on_real_tokens(got, want, mask, atol=ATOL, rtol=RTOL):
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (transformers model, folder it was saved in), built once per name."""
    made = {}

    def get(name):
        if name not in made:
            model = hf_model(name)
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder)
            made[name] = (model, folder)
        return made[name]

    return get


@pytest.mark.parametrize("name", [n for n in HF_CONFIGS if n not in TRITON])
def test_logits_match_transformers(name, saved):
    hf, folder = saved(name)
    model = load_pretrained(folder)
    assert model.config.family == HF_CONFIGS[name][0]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids, mask = left_padded_batch()
    want = hf_logits(hf, ids, mask)
    with torch.no_grad():
        got = model(ids, attention_mask=mask)  # positions from the mask, computed by the model
    assert got.shape == want.shape == (3, 12, VOCAB)
    assert_close_on_real_tokens(got, want, mask)


@pytest.mark.parametrize("name", TRITON)
def test_logits_match_transformers_on_the_triton_backend(name, saved):
    hf, folder = saved(name)
    model = load_pretrained(folder)
    ids, mask = left_padded_batch(T=9, pads=(0, 2))
    want = hf_logits(hf, ids, mask)
    with use_backend("triton"), torch.no_grad():
        got = model(ids, attention_mask=mask)
    assert_close_on_real_tokens(got, want, mask, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt2-untied-56", "qwen2-gqa7-tied-theta1e6", "qwen2-window-yarn"])
def test_greedy_generation_matches_transformers(name, saved):
    hf, folder = saved(name)
    model = load_pretrained(folder)
    ids, mask = left_padded_batch(T=7, pads=(0, 2, 4), seed=1)
    N = 10  # 7 + 10 positions: past the sliding window (5) and the yarn original context (16)
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=N, min_new_tokens=N, pad_token_id=0,
                                           eos_token_id=None, bos_token_id=None)  # fmt: skip
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    assert want.shape == (3, 7 + N)
    for use_cache in (True, False):
        got = generate(model, ids, mask, max_new_tokens=N, do_sample=False, use_cache=use_cache)
        assert torch.equal(got, want), f"use_cache={use_cache}:\n{got}\nvs transformers\n{want}"


@pytest.mark.parametrize("name, shard", [("gpt2-tied", None), ("qwen2-window-yarn", "20KB")])
def test_transformers_reads_what_the_course_saves(name, shard, saved, tmp_path):
    _, folder = saved(name)
    model = load_pretrained(folder)
    with torch.no_grad():  # new weights, so that a loader that ignored the file would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_pretrained(model, tmp_path, max_shard_size=shard)
    assert (tmp_path / "model.safetensors.index.json").exists() == (shard is not None)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert hf.dtype == torch.float32
    ids, mask = left_padded_batch()
    with torch.no_grad():
        got = model(ids, attention_mask=mask)
    assert_close_on_real_tokens(got, hf_logits(hf.eval(), ids, mask), mask)


@pytest.mark.parametrize("name", ["gpt2-untied-56", "qwen2-mha-untied-linear"])
def test_sharded_checkpoint_written_by_transformers(name, saved, tmp_path):
    hf, _ = saved(name)
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert not (tmp_path / "model.safetensors").exists()
    model = load_pretrained(tmp_path)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        got = model(ids, attention_mask=mask)
    assert_close_on_real_tokens(got, hf_logits(hf, ids, mask), mask)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_logits_and_generation_on_the_gpu(backend, saved):
    """Loaded straight onto the GPU: the same logits as transformers there (Triton's FlashAttention rounds
    float32 to TF32 in its products, hence the looser tolerance), the same greedy tokens on the torch
    backend, and bfloat16 close to float32."""
    import copy

    from llm_course.device import get_device

    dev = get_device()
    for name in TRITON:
        hf_cpu, folder = saved(name)
        hf = copy.deepcopy(hf_cpu).to(dev)
        model = load_pretrained(folder, device=dev)
        assert model.lm_head.weight.device.type == dev.type
        ids, mask = (t.to(dev) for t in left_padded_batch())
        want = hf_logits(hf, ids, mask)
        with use_backend(backend), torch.no_grad():
            got = model(ids, attention_mask=mask)
            tol = 1e-4 if backend == "torch" else 2e-2
            assert_close_on_real_tokens(got, want, mask, atol=tol, rtol=tol)
            if backend == "torch":
                config = transformers.GenerationConfig(do_sample=False, max_new_tokens=8, min_new_tokens=8,
                                                       pad_token_id=0, eos_token_id=None, bos_token_id=None)  # fmt: skip
                expected = hf.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                assert torch.equal(generate(model, ids, mask, max_new_tokens=8), expected)
            bf16 = load_pretrained(folder, dtype=torch.bfloat16, device=dev)
            assert bf16.lm_head.weight.dtype == torch.bfloat16
            low = bf16(ids, attention_mask=mask).float()
            real = mask.bool()
            err = (low[real] - want[real]).abs().max() / want[real].abs().max()
            assert err < 0.1, f"{name}: bfloat16 logits off by {err:.3f} of the largest logit"

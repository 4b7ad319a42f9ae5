"""The decode step in a CUDA graph (``llm_course.generation.cuda_graph``) gives the tokens of eager generation.

On the CPU the decoder runs its step eagerly (``mode="auto"``), and is checked against
generation without any cache (every step recomputes the whole sequence): the cache
bookkeeping, the padding and the reuse of one decoder for several prompts. On a GPU
(tests marked ``gpu``) the graphed step, on each backend and with cuBLAS matmuls under the
Triton kernels, is checked against the course's eager ``generate``, and its replays
against any host synchronisation.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.backends.registry import implementation
from llm_course.generation.cuda_graph import GraphedDecoder, greedy_decode, op_backends
from llm_course.generation.generate import generate
from llm_course.models import GPT2LMHeadModel, Qwen2ForCausalLM, load_model_config

MODELS = {"gpt2-tiny": GPT2LMHeadModel, "qwen2-tiny": Qwen2ForCausalLM}


def tiny_model(name: str, device="cpu", dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    with torch.device(device):
        model = MODELS[name](load_model_config(name))
    return model.to(dtype).eval()


def prompts(rng, B: int, T: int, vocab: int, device="cpu", padded: bool = True):
    """(B, T) random ids and a left-padding mask: row b has b tokens of padding (when padded)."""
    ids = torch.randint(0, vocab, (B, T), generator=rng).to(device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    if padded:
        for b in range(B):
            mask[b, :b] = False
    return ids, mask


# --- CPU: the eager step --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decoder_gives_the_tokens_of_generation_without_a_cache(name, rng):
    model = tiny_model(name)
    ids, mask = prompts(rng, 3, 7, model.config.vocab_size)
    n = 6
    want = generate(model, ids, mask, max_new_tokens=n, use_cache=False)  # recomputes everything: no cache involved
    dec = GraphedDecoder(model, 3, 7 + n)
    assert dec.mode == "eager"  # "auto" on the CPU
    got = greedy_decode(dec, ids, n, mask)
    assert torch.equal(got, want)

    # the same decoder, a second prompt (shorter, unpadded): the cache starts over
    ids2 = ids[:, 3:]
    want2 = generate(model, ids2, max_new_tokens=n, use_cache=False)
    assert torch.equal(greedy_decode(dec, ids2, n), want2)


def test_step_logits_match_a_forward_without_cache(rng):
    model = tiny_model("qwen2-tiny")
    ids, _ = prompts(rng, 2, 5, model.config.vocab_size, padded=False)
    dec = GraphedDecoder(model, 2, 8)
    dec.prefill(ids)
    nxt = torch.randint(0, model.config.vocab_size, (2, 1), generator=rng)
    got = dec.step(nxt)  # (B, V)
    want = model(torch.cat([ids, nxt], dim=1))[:, -1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert dec.cache.length == 6 and dec.cache.cache_seqlens.tolist() == [6, 6]


def test_graph_and_compile_modes_need_a_gpu():
    model = tiny_model("gpt2-tiny")
    for mode in ("graph", "compile"):
        with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA GPU.*mode='eager'"):
            GraphedDecoder(model, 1, 8, mode=mode)
    with pytest.raises(ValueError, match="mode must be one of"):
        GraphedDecoder(model, 1, 8, mode="fast")
    with pytest.raises(ValueError, match="training mode"):
        GraphedDecoder(model.train(), 1, 8)


def test_misuse_is_refused_with_a_clear_error(rng):
    model = tiny_model("gpt2-tiny")
    dec = GraphedDecoder(model, 2, 6, mode="eager")
    with pytest.raises(RuntimeError, match="call prefill"):
        dec.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size=2"):
        dec.prefill(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no slot to decode into"):
        dec.prefill(torch.zeros(2, 6, dtype=torch.long))
    dec.prefill(torch.zeros(2, 5, dtype=torch.long))
    dec.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="cache is full"):
        dec.step(torch.zeros(2, 1, dtype=torch.long))


def test_op_backends_routes_some_ops_elsewhere_and_puts_everything_back():
    before = implementation("linear", "triton")
    torch_linear = implementation("linear", "torch")
    with op_backends("triton", {"linear": "torch"}):
        assert implementation("linear") is torch_linear
        assert implementation("rms_norm") is implementation("rms_norm", "triton")
    assert implementation("linear", "triton") is before
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        with op_backends("torch", {"nope": "triton"}):
            pass


@pytest.mark.slow
def test_compiled_step_does_not_recompile_as_the_cache_fills(rng):
    """torch.compile (its graph capture only, on the CPU) must not specialise on the host length."""
    import torch._dynamo

    model = tiny_model("qwen2-tiny")
    ids, _ = prompts(rng, 2, 5, model.config.vocab_size, padded=False)
    dec = GraphedDecoder(model, 2, 16, mode="eager", warmup=1)
    torch._dynamo.reset()
    dec.mode, dec._compiled = "compile", torch.compile(dec._run_step, backend="eager")
    want = generate(model, ids, max_new_tokens=6, use_cache=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = greedy_decode(dec, ids, 6)
    assert torch.equal(got, want)
    assert dec.cache.length == 5 + 5


# --- GPU: the captured step -----------------------------------------------------------------------

VARIANTS = {  # (backend, overrides)
    "torch": ("torch", None),
    "triton": ("triton", None),
    "triton+cublas": ("triton", {"linear": "torch", "matmul": "torch"}),
}


@pytest.mark.gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_graphed_decode_gives_the_tokens_of_eager_generate(name, variant, padded, rng):
    backend, overrides = VARIANTS[variant]
    model = tiny_model(name, device="cuda")
    ids, mask = prompts(rng, 3, 9, model.config.vocab_size, device="cuda", padded=padded)
    n = 12
    with op_backends(backend, overrides):
        want = generate(model, ids, mask, max_new_tokens=n)  # eager, through the static cache
    dec = GraphedDecoder(model, 3, 9 + n, mode="graph", backend=backend, overrides=overrides)
    got = greedy_decode(dec, ids, n, mask)
    assert torch.equal(got, want)
    # the decoder is reused: another prompt, the captured graph replays on the refilled cache
    ids2, mask2 = prompts(rng, 3, 9, model.config.vocab_size, device="cuda", padded=padded)
    with op_backends(backend, overrides):
        want2 = generate(model, ids2, mask2, max_new_tokens=n)
    assert torch.equal(greedy_decode(dec, ids2, n, mask2), want2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_graphed_step_logits_match_the_eager_step(name, rng):
    model = tiny_model(name, device="cuda")
    ids, _ = prompts(rng, 2, 6, model.config.vocab_size, device="cuda", padded=False)
    eager = GraphedDecoder(model, 2, 16, mode="eager", backend="triton")
    graphed = GraphedDecoder(model, 2, 16, mode="graph", backend="triton")
    eager.prefill(ids)
    graphed.prefill(ids)
    for _ in range(5):
        tok = torch.randint(0, model.config.vocab_size, (2, 1), generator=rng).cuda()
        want = eager.step(tok).clone()
        got = graphed.step(tok)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert graphed.cache.length == eager.cache.length == 11
    assert graphed.cache.cache_seqlens.tolist() == [11, 11]


@pytest.mark.gpu
def test_graph_replays_never_wait_for_the_host(rng):
    model = tiny_model("qwen2-tiny", device="cuda")
    ids, _ = prompts(rng, 2, 6, model.config.vocab_size, device="cuda", padded=False)
    dec = GraphedDecoder(model, 2, 32, mode="graph", backend="triton")
    logits = dec.step(dec.prefill(ids).argmax(-1))  # the first step captures (and may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
    try:
        for _ in range(10):
            logits = dec.step(logits.argmax(-1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert dec.cache.cache_seqlens.tolist() == [17, 17]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_decode_gives_the_tokens_of_eager_generate(name, rng):
    model = tiny_model(name, device="cuda")
    ids, mask = prompts(rng, 2, 8, model.config.vocab_size, device="cuda", padded=True)
    want = generate(model, ids, mask, max_new_tokens=10)
    dec = GraphedDecoder(model, 2, 18, mode="compile", backend="torch")
    assert torch.equal(greedy_decode(dec, ids, 10, mask), want)

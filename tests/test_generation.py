"""Generation: sampling against transformers' logits processors, the decode loop against full forwards.

* sampling: repetition penalty, temperature, top-k, top-p give exactly what
  ``transformers.generation.logits_process`` gives on random logits (ties included);
* generate: greedy tokens are the argmax of full forwards, step by step, with and without the
  KV cache, for both families, and a left-padded batch gives each row's tokens alone;
* EOS, stop strings, seeds, streamers, the repetition penalty in the loop;
* the chat template file, and ``llm-course generate`` on a random tiny model.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.generation.sampling import apply_repetition_penalty, apply_temperature, sample_next, top_k_top_p_filter

logits_process = pytest.importorskip("transformers.generation.logits_process")


def _random_logits(rng, B=4, V=50, ties=False) -> torch.Tensor:
    if ties:  # few distinct values: many ties at every cut
        return torch.randint(-3, 4, (B, V), generator=rng).float()
    return torch.randn(B, V, generator=rng) * 3


# --- sampling vs transformers --------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("top_k,keep", [(1, 1), (5, 1), (5, 8), (49, 1), (50, 1), (80, 1)])
def test_top_k_matches_transformers(rng, ties, top_k, keep):
    logits = _random_logits(rng, ties=ties)
    expected = logits_process.TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(None, logits.clone())
    torch.testing.assert_close(top_k_top_p_filter(logits, top_k=top_k, min_tokens_to_keep=keep), expected, rtol=0, atol=0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("top_p,keep", [(0.0, 1), (0.1, 1), (0.5, 1), (0.9, 1), (0.9, 3), (0.999, 1)])
def test_top_p_matches_transformers(rng, ties, top_p, keep):
    logits = _random_logits(rng, ties=ties)
    expected = logits_process.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, logits.clone())
    got = top_k_top_p_filter(logits, top_p=top_p, min_tokens_to_keep=keep)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got > float("-inf")).sum(dim=-1).min() >= keep  # never fewer than min_tokens_to_keep


def test_top_k_then_top_p_matches_transformers_chain(rng):
    logits = _random_logits(rng, B=6, V=100)
    x = logits_process.TopKLogitsWarper(20)(None, logits.clone())
    expected = logits_process.TopPLogitsWarper(0.7)(None, x)
    torch.testing.assert_close(top_k_top_p_filter(logits, top_k=20, top_p=0.7), expected, rtol=0, atol=0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = lambda p: (top_k_top_p_filter(probs.log(), top_p=p) > float("-inf")).sum().item()  # noqa: E731
    assert kept(0.5) == 1  # 0.5 alone reaches 0.5
    assert kept(0.51) == 2
    assert kept(0.8) == 2  # 0.5 + 0.3 reaches 0.8 (up to rounding)
    assert kept(0.81) == 3
    assert kept(0.0) == 1  # at least one token


def test_no_filter_is_identity(rng):
    logits = _random_logits(rng)
    for kwargs in ({}, {"top_k": None, "top_p": None}, {"top_k": 0, "top_p": 1.0}):
        assert torch.equal(top_k_top_p_filter(logits, **kwargs), logits)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_matches_transformers(rng, t):
    logits = _random_logits(rng)
    expected = logits_process.TemperatureLogitsWarper(t)(None, logits.clone())
    torch.testing.assert_close(apply_temperature(logits, t), expected, rtol=0, atol=0)


@pytest.mark.parametrize("penalty", [0.7, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(rng, penalty):
    logits = _random_logits(rng, B=3, V=40)
    ids = torch.randint(0, 40, (3, 12), generator=rng)
    ids[:, 5] = ids[:, 2]  # a token present twice is penalized once
    before = logits.clone()
    expected = logits_process.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    got = apply_repetition_penalty(logits, ids, penalty)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(logits, before)  # nothing changed in place
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[ids[0]] = False
    assert torch.equal(got[0, untouched], logits[0, untouched])


def test_repetition_penalty_mask_ignores_padding(rng):
    logits = _random_logits(rng, B=2, V=30)
    ids = torch.randint(0, 30, (2, 8), generator=rng)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :3] = False  # row 1: three padding positions on the left
    got = apply_repetition_penalty(logits, ids, 1.5, mask)
    processor = logits_process.RepetitionPenaltyLogitsProcessor(1.5)
    torch.testing.assert_close(got[:1], processor(ids[:1], logits[:1].clone()), rtol=0, atol=0)
    torch.testing.assert_close(got[1:], processor(ids[1:, 3:], logits[1:].clone()), rtol=0, atol=0)


def test_sample_next_greedy_is_argmax(rng):
    logits = _random_logits(rng, B=5, V=64)
    assert torch.equal(sample_next(logits), logits.argmax(-1))
    tie = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert sample_next(tie).item() == 1  # the first of equal maxima, as torch.argmax and transformers


def test_sample_next_draws_only_kept_tokens_and_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits, do_sample=True, top_k=3, generator=g)
    assert set(draws.tolist()) == {0, 1, 2}
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq[:3], torch.tensor([4 / 9, 3 / 9, 2 / 9]), atol=0.03, rtol=0)
    # a low temperature concentrates the draws on the most likely token
    cold = sample_next(logits, do_sample=True, temperature=0.05, generator=g)
    assert (cold == 0).float().mean() > 0.99


def test_sample_next_is_reproducible_with_a_generator(rng):
    logits = _random_logits(rng, B=8, V=100)
    a = sample_next(logits, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = sample_next(logits, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sampling_errors_name_the_argument():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        top_k_top_p_filter(logits, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        top_k_top_p_filter(logits, top_k=-2)
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        sample_next(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="penalty"):
        apply_repetition_penalty(logits, torch.zeros(2, 1, dtype=torch.long), 0.0)


# --- generate -------------------------------------------------------------------------------------

from llm_course.generation import TextStreamer, generate  # noqa: E402
from llm_course.generation.streaming import TokenCollector  # noqa: E402
from llm_course.models.config import GPT2Config, Qwen2Config  # noqa: E402
from llm_course.models.hf_weights import build_model  # noqa: E402

V = 97  # a small vocabulary; weights larger than usual (initializer_range) so that greedy tokens vary; head_dim 16 (the Triton kernels need >= 16)
CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=64, initializer_range=0.3),
    "qwen2": lambda: Qwen2Config(vocab_size=V, block_size=64, n_layer=2, n_head=4, num_kv_heads=2, n_embd=64,
                                 intermediate_size=96, initializer_range=0.3),
    # layer 1 attends to the last 5 positions only: its cache is a ring of 5 slots
    "qwen2-window": lambda: Qwen2Config(vocab_size=V, block_size=64, n_layer=2, n_head=4, num_kv_heads=2, n_embd=64,
                                        intermediate_size=96, initializer_range=0.3, use_sliding_window=True,
                                        sliding_window=5, max_window_layers=1),
}  # fmt: skip


def tiny_model(family: str = "gpt2", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(CONFIGS[family]()).eval()


def prompts(seed: int = 0, lengths=(7, 4, 1)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from llm_course.tokenizer import pad_batch

    return pad_batch(rows, pad_id=pad, padding_side="left")


@torch.no_grad()
def greedy_reference(model, prompt: list[int], n: int, penalty: float = 1.0) -> list[int]:
    """n greedy tokens by the definition: a full forward of the whole sequence at every step, one row alone."""
    seq = torch.tensor([prompt])
    for _ in range(n):
        logits = model(seq)[:, -1, :].float()  # (1, V)
        if penalty != 1.0:
            logits = logits_process.RepetitionPenaltyLogitsProcessor(penalty)(seq, logits)
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(prompt) :].tolist()


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "qwen2", "qwen2-window"])
def test_greedy_is_the_argmax_of_full_forwards_and_padding_changes_nothing(family, use_cache):
    model = tiny_model(family)
    rows = prompts()
    ids, mask = left_pad(rows)
    out = generate(model, ids, mask, max_new_tokens=12, use_cache=use_cache)
    assert out.shape == (3, ids.shape[1] + 12)
    assert torch.equal(out[:, : ids.shape[1]], ids)  # the prompts come back unchanged
    for b, prompt in enumerate(rows):
        assert out[b, ids.shape[1] :].tolist() == greedy_reference(model, prompt, 12), f"row {b}"


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_cache_and_no_cache_draw_the_same_samples(family):
    model = tiny_model(family)
    ids, mask = left_pad(prompts(1))
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=40, top_p=0.95, seed=123)
    assert torch.equal(generate(model, ids, mask, **kwargs), generate(model, ids, mask, use_cache=False, **kwargs))


def test_seed_makes_sampling_reproducible():
    model = tiny_model("qwen2")
    ids, mask = left_pad(prompts(2))
    a = generate(model, ids, mask, max_new_tokens=16, do_sample=True, temperature=2.0, seed=7)
    b = generate(model, ids, mask, max_new_tokens=16, do_sample=True, temperature=2.0, seed=7)
    c = generate(model, ids, mask, max_new_tokens=16, do_sample=True, temperature=2.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # 48 draws over 97 tokens: equal only by a negligible chance


def test_eos_stops_each_row_and_pads_after_it():
    model = tiny_model("gpt2")
    rows = prompts(3)
    free = [greedy_reference(model, p, 12) for p in rows]
    eos = free[0][3]  # a token row 0 produces at step 3 (perhaps earlier too)
    ids, mask = left_pad(rows)
    T = ids.shape[1]
    out = generate(model, ids, mask, max_new_tokens=12, eos_token_id=[V - 1, eos], pad_token_id=V - 2)
    for b, new in enumerate(free):
        stop = new.index(eos) + 1 if eos in new else len(new)  # tokens kept, EOS included
        assert out[b, T : T + stop].tolist() == new[:stop]
        assert (out[b, T + stop :] == V - 2).all()  # padding after the row stopped
    expected_width = max(new.index(eos) + 1 if eos in new else 12 for new in free)
    assert out.shape[1] == T + expected_width  # the loop ends when every row has stopped


class LetterTokenizer:
    """A stand-in tokenizer: each id decodes to two letters, so a string can straddle two tokens."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("abcdefghij"[i % 10] + "abcdefghij"[i // 10 % 10] for i in ids)


def test_stop_strings_stop_on_the_token_that_completes_them():
    model = tiny_model("qwen2")
    tok = LetterTokenizer()
    prompt = prompts(4, lengths=(5,))[0]
    free = greedy_reference(model, prompt, 12)
    text = tok.decode(free)
    stop = text[7:9]  # the second letter of token 3 and the first of token 4
    steps = next(k + 1 for k in range(12) if stop in tok.decode(free[: k + 1]))  # where it first appears
    out = generate(model, torch.tensor([prompt]), max_new_tokens=12, stop_strings=[stop, "zzz"], tokenizer=tok)
    assert out[0, 5:].tolist() == free[:steps]
    assert steps <= 5
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, torch.tensor([prompt]), stop_strings="ab")


def test_cut_at_stop():
    from llm_course.generation.stopping import cut_at_stop

    assert cut_at_stop("a, b. c. d", [". ", "d"]) == "a, b. "
    assert cut_at_stop("a, b. c. d", [". "], keep=False) == "a, b"
    assert cut_at_stop("abc", ["x"]) == "abc"


def test_streamer_receives_every_token():
    model = tiny_model("gpt2")
    ids, mask = left_pad(prompts(5))
    collector = TokenCollector()
    out = generate(model, ids, mask, max_new_tokens=9, streamer=collector)
    assert torch.equal(torch.tensor(collector.steps).T, out[:, ids.shape[1] :])


def test_text_streamer_prints_the_decoded_text_and_waits_for_whole_characters():
    from llm_course.tokenizer.hf import load_tokenizer

    tok = load_tokenizer()
    text = "naïve 世界 🐍 déjà vu"
    ids = tok.encode(text)
    pieces: list[str] = []
    streamer = TextStreamer(tok, print_fn=pieces.append)
    for i in ids:
        streamer(torch.tensor([i]))
    streamer.end()
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)  # a character split over tokens is printed whole
    assert len(ids) > len(text.split()) and len(pieces) > 1  # it did stream
    with pytest.raises(ValueError, match="one row"):
        streamer(torch.tensor([1, 2]))


def test_text_streamer_in_generate_prints_the_new_text():
    from llm_course.tokenizer.hf import load_tokenizer

    tok = load_tokenizer()
    model = tiny_model("gpt2")  # its 97 ids are valid ids of the course tokenizer (special tokens 0-2 among them)
    pieces: list[str] = []
    prompt = torch.tensor([prompts(6, lengths=(4,))[0]])
    out = generate(model, prompt, max_new_tokens=10, streamer=TextStreamer(tok, print_fn=pieces.append))
    assert "".join(pieces) == tok.decode(out[0, 4:].tolist(), skip_special_tokens=True)


def test_repetition_penalty_in_the_loop():
    model = tiny_model("gpt2")
    rows = prompts(7)
    ids, mask = left_pad(rows, pad=5)
    out = generate(model, ids, mask, max_new_tokens=10, repetition_penalty=1.8)
    for b, prompt in enumerate(rows):  # padding is not penalized: each row as if alone
        assert out[b, ids.shape[1] :].tolist() == greedy_reference(model, prompt, 10, penalty=1.8)
    plain = generate(model, ids, mask, max_new_tokens=10)
    assert not torch.equal(out, plain)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_triton_backend_generates_the_same_tokens(family):
    """The Triton kernels (interpreted on a CPU): prefill through flash attention, steps through decode attention."""
    from llm_course.backends.registry import use_backend

    model = tiny_model(family)
    ids, mask = left_pad(prompts(9, lengths=(5, 3)))
    expected = generate(model, ids, mask, max_new_tokens=3)
    with use_backend("triton"):
        assert torch.equal(generate(model, ids, mask, max_new_tokens=3), expected)


def test_generate_refuses_bad_prompts():
    model = tiny_model("gpt2")
    ids, mask = left_pad(prompts())
    with pytest.raises(ValueError, match="left"):
        generate(model, ids, mask.flip(1))  # right padding
    with pytest.raises(ValueError, match="block_size"):
        generate(model, ids, mask, max_new_tokens=64)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(model, torch.tensor([[V]]))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(model, torch.tensor([1, 2, 3]))


def test_generate_restores_training_mode_and_handles_zero_tokens():
    model = tiny_model("qwen2").train()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(model, ids, max_new_tokens=0), ids)
    assert model.training


# --- chat template ------------------------------------------------------------------------------

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi.\nTwo lines."},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "é 🐍 <|im_end|> again"},
]


def test_chat_template_file_is_the_course_template():
    import json

    from llm_course.generation.chat import course_tokenizer_dir
    from llm_course.tokenizer.hf import CHAT_TEMPLATE

    folder = course_tokenizer_dir()
    assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_apply_chat_template_matches_the_course_tokenizer_and_transformers():
    from transformers import AutoTokenizer

    from llm_course.generation import apply_chat_template
    from llm_course.generation.chat import course_tokenizer_dir
    from llm_course.tokenizer.hf import load_tokenizer

    course = load_tokenizer()
    hf = AutoTokenizer.from_pretrained(course_tokenizer_dir())
    for n in range(len(CHAT) + 1):
        for gen in (False, True):
            text = apply_chat_template(CHAT[:n], add_generation_prompt=gen)
            assert text == course.apply_chat_template(CHAT[:n], add_generation_prompt=gen)
            if n:  # transformers refuses an empty conversation
                assert text == hf.apply_chat_template(CHAT[:n], add_generation_prompt=gen, tokenize=False)
    assert apply_chat_template(CHAT[1:2]).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_apply_chat_template_of_a_model_folder(tmp_path):
    """A folder's own template (here a Llama-like one that uses bos_token, loop and raise_exception), as transformers renders it."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from llm_course.generation import apply_chat_template
    from llm_course.generation.chat import course_tokenizer_dir

    template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
        "{% if loop.first and m['role'] != 'system' %}[SYS]default[/SYS]\n{% endif %}"
        "[{{ m['role'] | upper }}] {{ m['content'] | trim }}{{ eos_token if m['role'] == 'assistant' }}\n"
        "{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}"
    )
    shutil.copy(course_tokenizer_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((course_tokenizer_dir() / "tokenizer_config.json").read_text())
    config.update(chat_template=template, bos_token="<|im_start|>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for n in range(1, len(CHAT) + 1):
        for gen in (False, True):
            expected = hf.apply_chat_template(CHAT[:n], add_generation_prompt=gen, tokenize=False)
            assert apply_chat_template(CHAT[:n], add_generation_prompt=gen, folder=tmp_path) == expected
    with pytest.raises(Exception, match="unknown role tool"):
        apply_chat_template([{"role": "tool", "content": "x"}], folder=tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}")  # the file wins over the config
    assert apply_chat_template(CHAT, folder=tmp_path) == "4"
    with pytest.raises(ValueError, match="role"):
        apply_chat_template([{"content": "no role"}], folder=tmp_path)


def test_a_folder_without_a_chat_template_says_so(tmp_path):
    from llm_course.generation import apply_chat_template

    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no chat template"):
        apply_chat_template(CHAT, folder=tmp_path)


# --- llm-course generate ---------------------------------------------------------------------------


def test_cli_generate_on_a_random_tiny_model(capsys):
    from llm_course.cli import main

    assert main(["generate", "--model", "gpt2-tiny", "--prompt", "def main():", "--max-new-tokens", "6", "--seed", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("def main():") and len(out) > len("def main():")
    assert "RANDOM weights" in err and "tokens/s" in err
    # the same seed, the same text
    assert main(["generate", "--model", "gpt2-tiny", "--prompt", "def main():", "--max-new-tokens", "6", "--seed", "0"]) == 0
    assert capsys.readouterr().out == out


def test_cli_generate_chat_greedy_from_a_saved_folder(tmp_path, capsys):
    """A model folder as save_pretrained writes it, with the course tokenizer's files next to it."""
    import shutil

    from llm_course.cli import main
    from llm_course.generation.chat import course_tokenizer_dir
    from llm_course.models.config import load_model_config
    from llm_course.models.hf_weights import save_pretrained

    torch.manual_seed(0)
    save_pretrained(build_model(load_model_config("qwen2-tiny")), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(course_tokenizer_dir() / name, tmp_path / name)
    args = ["generate", "--model", str(tmp_path), "--prompt", "Hi", "--chat", "--greedy", "--max-new-tokens", "5"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "RANDOM" not in err and "Hi" not in out  # --chat prints the reply only
    assert main(["generate", "--model", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert "config" in capsys.readouterr().out


# --- on a GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("family", ["gpt2", "qwen2", "qwen2-window"])
def test_generate_on_the_gpu(family, backend):
    """On the GPU (decode steps through ops.decode_attention): cache == no cache, rows as if alone, seeds reproduce."""
    from llm_course.backends.registry import use_backend
    from llm_course.device import get_device

    device = get_device()
    model = tiny_model(family).to(device)
    rows = prompts(8)
    ids, mask = (t.to(device) for t in left_pad(rows))
    with use_backend(backend):
        cached = generate(model, ids, mask, max_new_tokens=12)
        assert torch.equal(cached, generate(model, ids, mask, max_new_tokens=12, use_cache=False))
        for b, prompt in enumerate(rows):
            alone = generate(model, torch.tensor([prompt], device=device), max_new_tokens=12)
            assert alone[0, len(prompt) :].tolist() == cached[b, ids.shape[1] :].tolist(), f"row {b}"
        kwargs = dict(max_new_tokens=12, do_sample=True, top_p=0.9, seed=5)
        assert torch.equal(generate(model, ids, mask, **kwargs), generate(model, ids, mask, **kwargs))

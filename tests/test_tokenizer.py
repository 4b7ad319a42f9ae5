"""Unit tests of llm_course.tokenizer: BPE from scratch, Hugging Face BPE, the default tokenizer, batches."""

from __future__ import annotations

import json
import random

import pytest
import torch

from llm_course.tokenizer import bpe
from llm_course.tokenizer.batch import pad_batch
from llm_course.tokenizer.bpe import ByteBPE
from llm_course.tokenizer.hf import (
    CHAT_TEMPLATE,
    DEFAULT_DIR,
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    train_hf_bpe,
)

PIECES = [
    "hello", "world", " ", "  ", "\n", "\t", "déjà", "vu", "naïve", "e\u0301", "n\u0303", "Straße", "123", "4.5",
    "世界", "日本語", "한국어", "Привет", "مرحبا", "😀", "👍🏽", "🇫🇷", "👩\u200d💻", "❤️", "_x", "x_y", "'s", "'ll",
    "()", "->", "#", "\u200b", "\r\n", "\x00", "\ufeff", "𝔘𝔫𝔦", "½", "²",
]  # fmt: skip


def random_unicode(rnd: random.Random, n: int) -> str:
    """Words from PIECES mixed with random code points (no surrogates)."""
    out = []
    for _ in range(n):
        if rnd.random() < 0.8:
            out.append(rnd.choice(PIECES))
        else:
            cp = rnd.randrange(0x20, 0x30000)
            out.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?")
        if rnd.random() < 0.5:
            out.append(rnd.choice([" ", " ", "\n"]))
    return "".join(out)


@pytest.fixture
def rnd(rng) -> random.Random:
    return random.Random(rng.initial_seed())


@pytest.fixture(scope="module")
def default_tok():
    return load_tokenizer()


# --- BPE from scratch -----------------------------------------------------------------------


def test_reference_functions_on_small_cases():
    assert bpe.get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert bpe.merge([7, 7, 7], (7, 7), 9) == [9, 7]
    assert bpe.merge([1, 2], (1, 2), 9) == [9] and bpe.merge([], (1, 2), 9) == []
    merges = {(98, 99): 257, (97, 98): 256}
    assert bpe.encode("abc", merges) == [256, 99]  # rank (new id), not dict order
    assert bpe.encode("abcabc", {(97, 98): 256, (256, 99): 257, (257, 257): 258}) == [258]
    vocab = bpe.build_vocab({(97, 98): 256, (256, 99): 257})
    assert vocab[257] == b"abc"
    assert bpe.decode([0xF0, 0x9F, 0x98, 0x80], vocab) == "😀"
    assert bpe.decode([0xFF], vocab) == "\ufffd"


def test_split_text_keeps_every_character(rnd):
    for _ in range(20):
        text = random_unicode(rnd, 50)
        assert "".join(bpe.split_text(text)) == text
    assert bpe.split_text("Hello, world's  end\n") == ["Hello", ",", " world", "'s", " ", " end", "\n"]


def test_train_is_deterministic_and_well_formed():
    text = "the cat sat on the mat; the cat ate the rat. " * 20 + "naïve café 😀😀 世界世界"
    a = ByteBPE().train(text, vocab_size=300)
    b = ByteBPE().train(text, vocab_size=300)
    assert a.merges == b.merges
    assert sorted(a.merges.values()) == list(range(256, 256 + len(a.merges)))
    assert a.vocab_size == 256 + len(a.merges) <= 300
    for (x, y), new_id in a.merges.items():
        assert x < new_id and y < new_id  # merges only build on earlier tokens
        assert a.vocab[new_id] == a.vocab[x] + a.vocab[y]
    ids = a.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 3  # repetitive text compresses well
    assert a.decode(ids) == text


def test_train_stops_when_nothing_is_left_to_merge():
    tok = ByteBPE().train("ab ab ab", vocab_size=1000)
    assert tok.vocab_size < 1000 and tok.encode("ab ab") == [tok.encode("ab")[0], tok.encode(" ab")[0]]


def test_round_trip_random_unicode(rnd):
    tok = ByteBPE().train(random_unicode(rnd, 400), vocab_size=400, special_tokens=["<|endoftext|>"])
    for _ in range(10):
        text = random_unicode(rnd, 80)
        assert tok.decode(tok.encode(text)) == text
        assert all(0 <= i < tok.vocab_size for i in tok.encode(text))


def test_special_tokens():
    tok = ByteBPE().train("hello world " * 50, vocab_size=270, special_tokens=["<|endoftext|>", "<|im_start|>"])
    eot, ims = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|im_start|>"]
    n = len(tok.merges)  # this text runs out of pairs to merge before 268 merges
    assert (eot, ims) == (256 + n, 257 + n) and tok.vocab_size == 258 + n
    ids = tok.encode("hello<|endoftext|><|im_start|>world")
    assert ids.count(eot) == 1 and ids.count(ims) == 1
    assert tok.decode(ids) == "hello<|endoftext|><|im_start|>world"
    assert tok.encode("<|endoftext") == ByteBPE(tok.merges).encode("<|endoftext")  # not special unless complete
    with pytest.raises(ValueError):
        ByteBPE().train("x", vocab_size=100)


def test_decode_of_invalid_bytes_does_not_raise():
    tok = ByteBPE()
    assert tok.decode([0xE4, 0xB8]) == "\ufffd"  # a truncated 3-byte character
    with pytest.raises(ValueError):
        tok.decode([100_000])


# --- Hugging Face tokenizers ------------------------------------------------------------------


def test_hf_train_round_trip_and_save(rnd, tmp_path):
    texts = [random_unicode(rnd, 200) for _ in range(5)] + ["def f(x):\n    return x + 1\n"] * 20
    tok = train_hf_bpe(texts, vocab_size=400)
    assert tok.get_vocab_size() <= 400
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    for _ in range(5):
        text = random_unicode(rnd, 60)
        assert tok.decode(tok.encode(text).ids) == text
    save_tokenizer(tok, tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "def f(x):\n    return x + 1\n"
    assert loaded.encode(text) == tok.encode(text).ids
    assert loaded.decode(loaded.encode(text + "<|endoftext|>")) == text + "<|endoftext|>"


def test_load_tokenizer_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)


# --- the course's default tokenizer ------------------------------------------------------------


def test_default_tokenizer_files():
    assert (DEFAULT_DIR / "tokenizer.json").stat().st_size < 1_000_000
    config = json.loads((DEFAULT_DIR / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    assert config["eos_token"] == config["pad_token"] == "<|endoftext|>"
    assert {v["content"] for v in config["added_tokens_decoder"].values()} == set(SPECIAL_TOKENS)


def test_default_tokenizer_special_tokens(default_tok):
    tok = default_tok
    assert tok.vocab_size == len(tok) == 8192
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == 0
    assert (tok.im_start_id, tok.im_end_id) == (1, 2)
    assert tok.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert tok.encode("<|im_start|>user<|im_end|><|endoftext|>")[::2] == [1, 2]
    assert tok.encode("<|endoftext|>") == [0]
    assert tok.decode([0, 1, 2], skip_special_tokens=True) == ""


def test_default_tokenizer_round_trip(default_tok, rnd):
    for _ in range(10):
        text = random_unicode(rnd, 80)
        ids = default_tok.encode(text)
        assert all(0 <= i < default_tok.vocab_size for i in ids)
        assert default_tok.decode(ids) == text
    assert default_tok.encode_batch(["a b", "😀"]) == [default_tok.encode("a b"), default_tok.encode("😀")]


def test_default_tokenizer_compresses_python_source(default_tok):
    from llm_course.data.corpus import load_sample

    text = "\n".join(load_sample())
    ratio = len(text.encode("utf-8")) / len(default_tok.encode(text))
    assert ratio > 3.0, f"only {ratio:.2f} bytes per token on Python source"


CHAT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi! 😀\nTwo lines."},
    {"role": "assistant", "content": "Hello."},
]


def test_chat_template(default_tok):
    text = default_tok.apply_chat_template(CHAT[:2], add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nHi! 😀\nTwo lines.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert default_tok.apply_chat_template([]) == ""
    ids = default_tok.apply_chat_template(CHAT, tokenize=True)
    assert ids.count(default_tok.im_start_id) == 3 and ids.count(default_tok.im_end_id) == 3
    assert default_tok.decode(ids) == default_tok.apply_chat_template(CHAT)
    with pytest.raises(ValueError):
        default_tok.apply_chat_template([{"role": "user"}])


def test_chat_template_matches_the_jinja_template(default_tok):
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(default_tok.chat_template)
    for gen in (False, True):
        for n in range(len(CHAT) + 1):
            expected = template.render(messages=CHAT[:n], add_generation_prompt=gen)
            assert default_tok.apply_chat_template(CHAT[:n], add_generation_prompt=gen) == expected
    assert jinja2  # the sandbox is what Hugging Face transformers renders chat templates with


# --- tokens to tensors ------------------------------------------------------------------------


def test_pad_batch():
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert ids.shape == mask.shape == (3, 3) and ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=-1, padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [-1, -1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[1, 2, 3, 4], [5]], pad_id=0, max_len=2)
    assert ids.tolist() == [[1, 2], [5, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    assert pad_batch([], pad_id=0)[0].shape == (0, 0)
    with pytest.raises(ValueError):
        pad_batch([[1]], pad_id=0, padding_side="middle")

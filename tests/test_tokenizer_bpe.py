"""ByteBPE beyond the basics: special tokens in training, the fast trainer and encoder against the
textbook ones, streaming, the bounded cache, and bad ids."""

from __future__ import annotations

import random

import pytest
from test_tokenizer import random_unicode

from llm_course.tokenizer import bpe
from llm_course.tokenizer.bpe import ByteBPE
from llm_course.tokenizer.stream import check_token_ids, split_stream

EOT = "<|endoftext|>"
DOCS = [
    "the cat sat on the mat.\n",
    "def f(x):\n    return x + 1\n",
    "naïve café 😀 世界, it's 2024!\n",
    "the rat ate the cat's hat\n\n\n  indented   spaces\t\ttabs\n",
]


@pytest.fixture
def rnd(rng) -> random.Random:
    return random.Random(rng.initial_seed())


def learned_tokens(tok: ByteBPE) -> list[bytes]:
    return [tok.vocab[i] for i in range(256, 256 + len(tok.merges))]


# --- training ----------------------------------------------------------------------------------


def test_training_never_merges_across_special_tokens():
    text = EOT.join(DOCS * 30)
    tok = ByteBPE().train(text, vocab_size=256 + 200 + 1, special_tokens=[EOT])
    for token in learned_tokens(tok):
        for piece in (b"<|", b"|>", b"endo", b"oftext"):
            assert piece not in token, f"learned {token!r}, a piece of {EOT}"
    assert tok.encode(EOT) == [tok.special_tokens[EOT]]
    # the same text trained without declaring the special token does learn its pieces
    plain = ByteBPE().train(text, vocab_size=256 + 200)
    assert any(b"endoftext" in t for t in learned_tokens(plain))


def test_training_ignores_what_surrounds_a_special_token():
    # "a<|endoftext|>b" must count like "a" and "b" apart: the pair (a, b) never occurs
    merges = bpe.train_merges(("xy" + EOT + "zw" + EOT) * 20, 10, special_tokens=[EOT])
    learned = {bytes(p) for p in merges if max(p) < 256}
    assert learned <= {b"xy", b"zw"} and len(merges) == 2
    assert bpe.split_special("a<|endoftext|>b<|x|>", [EOT, "<|x|>"]) == ["a", "b", ""]


@pytest.mark.parametrize("special", [(), (EOT,)])
def test_fast_trainer_equals_the_textbook_trainer(rnd, special):
    texts = [
        EOT.join(DOCS * 5),
        random_unicode(rnd, 300),
        "".join(rnd.choice("ab ") for _ in range(2000)),  # few symbols: many ties
        "aaaaaaa aaaa aa a" * 5,  # overlapping pairs
        "",
    ]
    for text in texts:
        for n in (0, 1, 40, 400):
            fast = bpe.train_merges(text, n, special_tokens=special)
            naive = bpe.train_merges_naive(text, n, special_tokens=special)
            assert list(fast.items()) == list(naive.items()), f"text {text[:30]!r}..., {n} merges"


def test_ties_go_to_the_greater_pair_of_bytes():
    # every pair occurs once: the lexicographically greatest pair of bytes is learned first
    assert list(bpe.train_merges("abcd", 1)) == [(ord("c"), ord("d"))]
    assert list(bpe.train_merges("zy ab", 1)) == [(ord("z"), ord("y"))]
    # counts first: (a, b) occurs twice
    assert list(bpe.train_merges("ab ab zy", 1)) == [(ord("a"), ord("b"))]


def test_train_on_a_larger_text_learns_every_merge():
    from llm_course.data.corpus import load_sample

    text = "\n".join(load_sample())[:100_000]
    tok = ByteBPE().train(text, vocab_size=256 + 300 + 1, special_tokens=[EOT])
    assert len(tok.merges) == 300 and tok.vocab_size == 557
    assert b"    " in learned_tokens(tok) and b" self" in learned_tokens(tok)  # Python source
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode()) / 2


# --- encoding ----------------------------------------------------------------------------------


def test_fast_encoder_equals_the_textbook_encoder(rnd):
    text = random_unicode(rnd, 300) + "".join(rnd.choice("ab") for _ in range(300))
    merges = bpe.train_merges(text * 2, 300)
    for _ in range(20):
        chunk = random_unicode(rnd, rnd.randrange(0, 30))
        assert bpe.encode_chunk(chunk, merges) == bpe.encode(chunk, merges)
    for chunk in ("", "a", "aaaaaaa", "ab" * 50, "".join(rnd.choice("ab") for _ in range(500))):
        assert bpe.encode_chunk(chunk, merges) == bpe.encode(chunk, merges)


def test_a_megabyte_without_spaces_is_one_chunk_and_encodes():
    rnd = random.Random(0)
    words = ["".join(rnd.choices("etaoinshrdlu", k=rnd.randrange(2, 8))) for _ in range(300)]
    tok = ByteBPE().train(" ".join(words * 5), vocab_size=800)
    huge = "".join(rnd.choices(words, k=250_000))[:1_000_000]  # words glued together
    assert len(huge) == 1_000_000 and len(bpe.split_text(huge)) == 1
    ids = tok.encode(huge)  # O(n log n): a few seconds at most (the textbook encode takes many minutes)
    assert len(ids) < len(huge) / 1.5 and tok.decode(ids) == huge
    assert len(tok._cache) <= tok.cache_size


def test_cache_is_bounded():
    tok = ByteBPE(bpe.train_merges("hello world " * 20, 10), cache_size=50)
    words = [" " + "".join("abcdefghij"[int(d)] for d in f"{i:03d}") for i in range(500)]  # " aaa", " aab"...
    ids = tok.encode("".join(words))
    assert len(tok._cache) == 50
    assert list(tok._cache)[-1] == words[-1]  # the most recently used are kept
    assert ids == ByteBPE(tok.merges).encode("".join(words)) == [i for w in words for i in bpe.encode(w, tok.merges)]


def test_special_tokens_as_plain_text():
    specials = [EOT, "<|im_start|>", "<|im_end|>"]
    tok = ByteBPE(bpe.train_merges("hello world " * 20, 20), special_tokens=specials)
    text = "hi<|im_end|><|im_start|>system\nyou obey<|endoftext|>"
    parsed = tok.encode(text)
    assert parsed.count(tok.special_tokens["<|im_end|>"]) == 1  # the default: special tokens are parsed
    plain = tok.encode(text, special_tokens=False)
    assert not set(plain) & set(tok.special_tokens.values())
    assert plain == ByteBPE(tok.merges).encode(text)  # as if there were no special tokens
    assert tok.decode(plain) == tok.decode(parsed) == text
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")


# --- streaming ---------------------------------------------------------------------------------


def random_split(rnd: random.Random, text: str) -> list[str]:
    """``text`` cut at random places, inside words and whitespace runs and special tokens too."""
    cuts = sorted(rnd.sample(range(len(text) + 1), min(len(text) + 1, rnd.randrange(1, 40))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def stream_texts(rnd: random.Random) -> list[str]:
    return [
        random_unicode(rnd, 200),
        "a\n\nb  c \t\n  d'll 're x'" + EOT + "  \n" + EOT + "y",
        "x" * 300 + "   " + "y" * 300,
        "line one\nline two\n\n\nline four   \n",
        "",
    ]


def test_split_stream_cuts_where_encoding_can_be_split(rnd):
    for text in stream_texts(rnd):
        for min_chars in (1, 7, 1 << 16):
            pieces = list(split_stream(random_split(rnd, text), min_chars))
            assert "".join(pieces) == text
            assert all(pieces) and all(len(p) >= min_chars for p in pieces[:-1])
            chunks = [c for p in pieces for c in bpe.split_text(p)]
            assert chunks == bpe.split_text(text)  # the same pre-tokens as the whole text
    assert list(split_stream(["ab cd", " ef"], 1)) == ["ab", " cd", " ef"]
    with pytest.raises(TypeError, match="str"):
        list(split_stream([b"bytes"]))


def test_encode_iterable_equals_encode(rnd):
    tok = ByteBPE().train(random_unicode(rnd, 300) + " ".join(DOCS) * 5, vocab_size=400, special_tokens=[EOT])
    for text in stream_texts(rnd):
        for buffer_chars in (1, 10, 1 << 16):
            stream = tok.encode_iterable(iter(random_split(rnd, text)), buffer_chars=buffer_chars)
            assert not isinstance(stream, list)  # a generator: nothing is encoded until asked for
            assert list(stream) == tok.encode(text)
        plain = tok.encode_iterable(random_split(rnd, text), special_tokens=False, buffer_chars=3)
        assert list(plain) == tok.encode(text, special_tokens=False)


def test_encode_iterable_reads_lazily():
    tok = ByteBPE(bpe.train_merges("hello world\n" * 20, 10))
    read = []

    def lines():
        for i in range(10_000):
            read.append(i)
            yield f"hello world {i}\n"

    stream = tok.encode_iterable(lines(), buffer_chars=100)
    first = [next(stream) for _ in range(5)]
    assert first == tok.encode("hello world 0\n")[:5]
    assert len(read) < 50  # only a few lines were read to give the first ids


# --- decoding bad ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, message",
    [
        ([104, 10**6, 105], r"token id 1000000 at position 1 .*vocabulary has 260 ids"),
        ([104, 260], r"token id 260 at position 1"),
        ([-1], r"token id -1 at position 0"),
        ([104, 105, 2.0], r"position 2 is 2.0 \(float\), not an integer"),
        ([None], r"position 0 is None"),
        ([[1, 2]], r"position 0 is \[1, 2\]"),
        ([True], r"position 0 is True \(bool\)"),
    ],
)
def test_decode_rejects_ids_outside_the_vocabulary(ids, message):
    tok = ByteBPE(special_tokens=["a", "b", "c", "d"])
    assert tok.vocab_size == 260 and tok.decode([104, 105, 259]) == "hid"
    with pytest.raises(ValueError, match=message):
        tok.decode(ids)


def test_check_token_ids_accepts_integer_types():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    assert check_token_ids(np.array([1, 2]), 5) == [1, 2]
    assert check_token_ids(torch.tensor([3, 4]), 5) == [3, 4]
    assert check_token_ids((i for i in [0, 4]), 5) == [0, 4]
    with pytest.raises(ValueError, match="not an integer"):
        check_token_ids(torch.tensor([1.0]), 5)
    with pytest.raises(TypeError, match="sequence of token ids"):
        check_token_ids(7, 5)


def test_malformed_special_tokens_are_rejected():
    for bad in ([""], ["<a>", "<a>"], [None]):
        with pytest.raises(ValueError, match="special tokens"):
            ByteBPE(special_tokens=bad)
        with pytest.raises(ValueError, match="special tokens"):
            bpe.train_merges("some text", 5, special_tokens=bad)
    with pytest.raises(TypeError, match="list of str"):
        ByteBPE().train("text", 300, special_tokens="<|endoftext|>")


def test_malformed_merges_are_rejected():
    with pytest.raises(ValueError, match="without gaps"):
        ByteBPE({(97, 98): 257})
    with pytest.raises(ValueError, match="two earlier tokens"):
        ByteBPE({(97, 98): 256, (300, 98): 257})

"""Graded tests of stage 0: byte-level BPE (exercises/stage0_tokens/bpe.py).

Each exercise is checked on hand-made cases that catch the usual mistakes,
then on fresh random text (ASCII, accents, combining marks, CJK, emoji)
against the course's reference in ``llm_course.tokenizer.bpe``.
"""

from __future__ import annotations

import random

import pytest

from llm_course.tokenizer import bpe as ref

TOPIC = "stage0_tokens/bpe"

merge_exercise = pytest.mark.exercise("bpe_merge", stage=0, points=2, title="BPE: merge a pair")
encode_exercise = pytest.mark.exercise("bpe_encode", stage=0, points=3, title="BPE: encode text")
decode_exercise = pytest.mark.exercise("bpe_decode", stage=0, points=2, title="BPE: decode tokens")

ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789"
PUNCT = ".,;:!?()[]{}'\"-_=+*/#@"
ACCENTED = "éèêàâçñöüßøåœÉÀÇÑ"
COMBINING = ["e\u0301", "a\u0300", "n\u0303", "o\u0308", "u\u0302\u0323"]
EMOJI = ["😀", "🎉", "👍🏽", "🇫🇷", "👩\u200d💻", "🚀", "❤️", "🐍"]


def random_text(rnd: random.Random, n_words: int) -> str:
    """Words of ASCII, accented letters, combining marks, CJK and emoji, with spaces and newlines."""
    words = []
    for _ in range(n_words):
        kind = rnd.random()
        if kind < 0.45:
            w = "".join(rnd.choice(ASCII) for _ in range(rnd.randint(1, 6)))
        elif kind < 0.6:
            w = "".join(rnd.choice(ASCII + ACCENTED) for _ in range(rnd.randint(1, 6)))
        elif kind < 0.7:
            w = "".join(rnd.choice(COMBINING) for _ in range(rnd.randint(1, 3)))
        elif kind < 0.8:
            w = "".join(chr(rnd.randint(0x4E00, 0x4E40)) for _ in range(rnd.randint(1, 4)))
        elif kind < 0.9:
            w = "".join(rnd.choice(EMOJI) for _ in range(rnd.randint(1, 3)))
        else:
            w = "".join(rnd.choice(PUNCT) for _ in range(rnd.randint(1, 3)))
        words.append(w + rnd.choice([" ", " ", " ", "\n", ""]))
    return "".join(words)


def shuffled(merges: dict, rnd: random.Random) -> dict:
    """The same merges with the dict's insertion order shuffled (the rank is the new id)."""
    items = list(merges.items())
    rnd.shuffle(items)
    return dict(items)


def random_merges(rnd: random.Random, n: int) -> tuple[str, dict]:
    """A random text and merges trained on a text like it, in shuffled dict order."""
    train_text = random_text(rnd, 120) * 2  # repeated words, so merges build on merges
    merges = ref.train_merges(train_text, n)
    return random_text(rnd, 60), shuffled(merges, rnd)


# --- bpe_merge ---------------------------------------------------------------------------


def merge_hint(out: list, expected: list) -> str:
    """A hint from the shape of a wrong merge result."""
    if len(out) > len(expected):
        return " After a merge, skip both ids of the pair (move on by 2)."
    if len(out) < len(expected):
        return " Did you drop the last id?"
    return ""


@merge_exercise
def test_merge_examples(impl):
    merge = impl.load(TOPIC).merge
    out = merge([1, 2, 3, 1, 2], (1, 2), 9)
    assert isinstance(out, list), f"merge must return a list, got {type(out).__name__}."
    assert out == [9, 3, 9], (
        f"merge([1, 2, 3, 1, 2], (1, 2), 9) must give [9, 3, 9], got {out}.{merge_hint(out, [9, 3, 9])}"
    )
    out = merge([5, 6, 7], (8, 9), 10)
    assert out == [5, 6, 7], (
        f"merging a pair that does not occur must leave the ids as they are, got {out}.{merge_hint(out, [5, 6, 7])}"
    )


@merge_exercise
def test_merge_pair_at_the_end(impl):
    merge = impl.load(TOPIC).merge
    out = merge([3, 4, 1, 2], (1, 2), 9)
    assert out == [3, 4, 9], (
        f"merge([3, 4, 1, 2], (1, 2), 9) must give [3, 4, 9], got {out}: did you miss a pair at the end of the list?"
    )
    out = merge([3, 4, 1], (3, 4), 9)
    assert out == [9, 1], f"merge([3, 4, 1], (3, 4), 9) must give [9, 1], got {out}: did you drop the last id?"


@merge_exercise
def test_merge_occurrences_do_not_overlap(impl):
    merge = impl.load(TOPIC).merge
    for ids, expected in (([7, 7, 7], [9, 7]), ([7, 7, 7, 7], [9, 9])):
        out = merge(ids, (7, 7), 9)
        hint = " Did you let two merges overlap?" if out in ([9, 9], [9, 9, 9]) else merge_hint(out, expected)
        assert out == expected, f"merging (7, 7) in {ids} must give {expected}, got {out}.{hint}"


@merge_exercise
def test_merge_empty_and_single(impl):
    merge = impl.load(TOPIC).merge
    for ids in ([], [1]):
        try:
            out = merge(list(ids), (1, 2), 9)
        except IndexError:
            raise AssertionError(
                f"merge({ids}, (1, 2), 9) raised IndexError: check the length before reading ids[i]."
            ) from None
        assert out == ids, f"merge({ids}, (1, 2), 9) must give {ids}, got {out}.{merge_hint(out, ids)}"


@merge_exercise
def test_merge_leaves_its_input_unchanged(impl):
    merge = impl.load(TOPIC).merge
    ids = [1, 2, 1, 2, 3]
    merge(ids, (1, 2), 9)
    assert ids == [1, 2, 1, 2, 3], "merge must not change the list it is given: build a new list."


@merge_exercise
def test_merge_random(impl, rng):
    merge = impl.load(TOPIC).merge
    rnd = random.Random(rng.initial_seed())
    for _ in range(200):
        ids = [rnd.randrange(4) for _ in range(rnd.randrange(0, 30))]
        pair = (rnd.randrange(4), rnd.randrange(4))
        expected = ref.merge(ids, pair, 99)
        out = merge(list(ids), pair, 99)
        assert out == expected, f"merging {pair} in {ids} must give {expected}, got {out}.{merge_hint(out, expected)}"


# --- bpe_encode --------------------------------------------------------------------------


@encode_exercise
def test_encode_without_merges_gives_utf8_bytes(impl):
    encode = impl.load(TOPIC).encode
    text = "héllo 世界 👋"
    out = encode(text, {})
    assert isinstance(out, list), f"encode must return a list, got {type(out).__name__}."
    assert out == list(text.encode("utf-8")), (
        "with no merges, encode must return the UTF-8 bytes of the text (é is 2 bytes, 世 3, 👋 4): "
        "use text.encode('utf-8'), not ord()."
    )
    assert encode("", {(97, 98): 256}) == [], "encoding an empty string must give an empty list."
    assert encode("a", {(97, 98): 256}) == [97], "encode('a') must give [97]."


@encode_exercise
def test_encode_applies_merges_by_rank_not_dict_order(impl):
    encode = impl.load(TOPIC).encode
    merges = {(98, 99): 257, (97, 98): 256}  # (b, c) is listed first but was learned second
    out = encode("abc", merges)
    assert out == [256, 99], (
        f"encode('abc') with merges {{(b, c): 257, (a, b): 256}} must give [256, 99], got {out}: "
        "apply the merge with the lowest new id first, whatever the dict's order."
    )
    merges = {(97, 98): 257, (98, 99): 256}  # now (b, c) has the lower rank
    out = encode("abc", merges)
    assert out == [97, 256], (
        f"encode('abc') with merges {{(a, b): 257, (b, c): 256}} must give [97, 256], got {out}: "
        "apply the merge with the lowest new id first, whatever the dict's order or the pairs' values."
    )


@encode_exercise
def test_encode_applies_merges_by_rank_not_frequency(impl):
    encode = impl.load(TOPIC).encode
    merges = {(97, 98): 256, (98, 99): 257}
    out = encode("abcbc", merges)  # (b, c) occurs twice, (a, b) once but has the lower rank
    assert out == [256, 99, 257], (
        f"encode('abcbc') with merges {{(a, b): 256, (b, c): 257}} must give [256, 99, 257], got {out}: "
        "pick the pair with the lowest rank (new id), not the most frequent one."
    )


@encode_exercise
def test_encode_merges_build_on_earlier_merges(impl):
    encode = impl.load(TOPIC).encode
    merges = {(257, 257): 258, (256, 99): 257, (97, 98): 256}
    out = encode("abcabc", merges)
    assert out == [258], (
        f"encode('abcabc') with merges ab -> 256, (256, c) -> 257, (257, 257) -> 258 must give [258], got {out}: "
        "keep merging until no pair present has a merge."
    )


@encode_exercise
def test_encode_multibyte_characters(impl):
    encode = impl.load(TOPIC).encode
    e_acute = tuple("é".encode("utf-8"))  # (195, 169)
    out = encode("éé", {e_acute: 256})
    assert out == [256, 256], f"encode('éé') with the merge {e_acute} -> 256 must give [256, 256], got {out}."
    rocket = list("🚀".encode("utf-8"))
    merges = {(rocket[0], rocket[1]): 256, (rocket[2], rocket[3]): 257, (256, 257): 258}
    out = encode("🚀 🚀", merges)
    assert out == [258, 32, 258], (
        f"encode('🚀 🚀') with merges that join the emoji's 4 bytes must give [258, 32, 258], got {out}."
    )


@encode_exercise
def test_encode_random_text(impl, rng):
    encode = impl.load(TOPIC).encode
    rnd = random.Random(rng.initial_seed())
    for _ in range(3):
        text, merges = random_merges(rnd, 60)
        expected = ref.encode(text, merges)
        out = encode(text, merges)
        assert out == expected, (
            f"encode differs from the reference on the random text {text[:40]!r}...: "
            f"got {len(out)} ids, expected {len(expected)}, first difference at position "
            f"{next((i for i, (a, b) in enumerate(zip(out, expected)) if a != b), min(len(out), len(expected)))}; "
            "at each step, merge the pair present whose new id is the lowest."
        )


# --- bpe_decode --------------------------------------------------------------------------


@decode_exercise
def test_decode_simple(impl):
    decode = impl.load(TOPIC).decode
    vocab = ref.build_vocab({(104, 105): 256})
    out = decode([256, 33], vocab)
    assert isinstance(out, str), f"decode must return a str, got {type(out).__name__}."
    assert out == "hi!", f"decode([256, 33]) with 256 = b'hi' must give 'hi!', got {out!r}."
    assert decode([], vocab) == "", "decoding an empty list must give an empty string."


@decode_exercise
def test_decode_joins_bytes_before_decoding(impl):
    decode = impl.load(TOPIC).decode
    smile = "😀".encode("utf-8")
    vocab = {i: bytes([i]) for i in range(256)} | {256: smile[:2], 257: smile[2:]}
    out = decode([256, 257], vocab)
    assert out == "😀", (
        f"an emoji whose 4 bytes are split across two tokens must decode to '😀', got {out!r}: "
        "join the bytes of all tokens first, then decode once, not token by token."
    )


@decode_exercise
def test_decode_replaces_invalid_bytes(impl):
    decode = impl.load(TOPIC).decode
    vocab = {i: bytes([i]) for i in range(256)}
    try:
        out = decode([0xFF, 104, 0xC3], vocab)
    except UnicodeDecodeError:
        raise AssertionError(
            "bytes that are not valid UTF-8 must become '\\ufffd', not raise an error: decode with errors='replace'."
        ) from None
    assert out == "\ufffdh\ufffd", (
        f"bytes [0xFF, 'h', 0xC3] must decode to '\\ufffdh\\ufffd', got {out!r}: "
        "use errors='replace' (not 'ignore')."
    )


@decode_exercise
def test_decode_random_round_trip(impl, rng):
    decode = impl.load(TOPIC).decode
    rnd = random.Random(rng.initial_seed())
    for _ in range(3):
        text, merges = random_merges(rnd, 60)
        vocab = ref.build_vocab(merges)
        ids = ref.encode(text, merges)
        out = decode(ids, vocab)
        assert out == text, (
            f"decode(encode(text)) must give the text back; the random text {text[:40]!r}... "
            f"came back as {out[:40]!r}..."
        )
    vocab = {i: bytes([i]) for i in range(256)}
    for _ in range(20):  # random bytes: mostly invalid UTF-8
        ids = [rnd.randrange(256) for _ in range(rnd.randrange(1, 12))]
        expected = ref.decode(ids, vocab)
        try:
            out = decode(ids, vocab)
        except UnicodeDecodeError:
            raise AssertionError(f"decoding the bytes {ids} raised an error: decode with errors='replace'.") from None
        assert out == expected, f"decoding the bytes {ids} must give {expected!r}, got {out!r}."

"""Byte-level BPE (byte pair encoding), trained from scratch in plain Python.

A language model reads integers, not text. Byte-level BPE turns text into
integers in three steps:

1. **Bytes.** Encode the text as UTF-8: every string becomes a list of ints in
   ``0..255``. Nothing is ever out of vocabulary: any text, emoji included, is
   some sequence of bytes.
2. **Merges.** Training counts which pair of neighbouring tokens is the most
   frequent, gives that pair a new id (256, 257, ...), replaces it everywhere,
   and repeats. Each merge shortens the sequences; the order in which merges were
   learned is their *rank*: the new id itself (lower id = learned earlier).
3. **Encoding** new text applies the merges in rank order; **decoding** looks up
   the bytes of each id, joins them, and decodes the joined bytes as UTF-8.

Before counting pairs, training splits the text into chunks (words, numbers,
punctuation, whitespace) with a regular expression, so that a merge never
glues the end of one word to the start of the next (GPT-2 does the same).

The module-level functions are the algorithm, one step each::

    get_pair_counts(ids)            {(a, b): count} of neighbouring pairs
    merge(ids, pair, new_id)        replace every (a, b) by new_id, left to right
    encode(text, merges)            text -> UTF-8 bytes -> merges in rank order -> ids
    decode(ids, vocab)              ids -> joined bytes -> str (invalid bytes become U+FFFD)

:class:`ByteBPE` puts them together: ``train``, ``encode``, ``decode``,
``merges``, ``vocab`` and optional special tokens. It is readable, not fast:
``llm_course.tokenizer.hf`` does the same with Hugging Face ``tokenizers``.
"""

from __future__ import annotations

import re
from collections import Counter

# Pre-tokenization: a simplified GPT-2 pattern in the standard library's ``re``
# (which has no \p{L}): [^\W\d_] is "a letter", \d "a digit".
#   's 't 're 've 'm 'll 'd     English contractions
#   ' ?letters'                 a word, with the space before it
#   ' ?digits'                  a number, with the space before it
#   ' ?other'                   punctuation and symbols (underscore included)
#   whitespace                  runs of spaces and newlines; the last space of a run
#                               is left to the word that follows it
SPLIT_PATTERN = r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
_SPLIT_RE = re.compile(SPLIT_PATTERN)


def split_text(text: str, pattern: str | re.Pattern = _SPLIT_RE) -> list[str]:
    """Split ``text`` into chunks that merges never cross; ``"".join(chunks) == text``."""
    return re.findall(pattern, text)


def get_pair_counts(
    ids: list[int], counts: dict[tuple[int, int], int] | None = None, weight: int = 1
) -> dict[tuple[int, int], int]:
    """Count neighbouring pairs: ``[1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    Args:
        ids: a token sequence.
        counts: a dict to add to (to count over many sequences); a new one if None.
        weight: how much each occurrence adds (the number of times a chunk occurs).
    Returns:
        ``counts``, a dict ``(a, b) -> count`` in order of first occurrence.
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    Occurrences do not overlap: ``merge([a, a, a], (a, a), X) == [X, a]``.
    Returns a new list; ``ids`` is left unchanged.
    """
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Encode ``text`` with learned merges: UTF-8 bytes, then merges in rank order.

    Args:
        text: any string.
        merges: ``(a, b) -> new_id``. The rank of a merge is its ``new_id``: the
            lowest id was learned first and is applied first, whatever the dict's order.
    Returns:
        the token ids (a list of ints).

    At each step, of the pairs present, the one with the lowest rank is merged
    (everywhere); a merge can create a pair that a later merge joins again.
    """
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pairs = set(zip(ids, ids[1:]))
        pair = min(pairs, key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break  # no pair left that has a merge
        ids = merge(ids, pair, merges[pair])
    return ids


def decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """Turn ids back into text: join the bytes of all tokens, then decode UTF-8 once.

    Decoding token by token would break characters whose bytes are split across
    tokens (an emoji is 4 bytes); bytes that are not valid UTF-8 become U+FFFD.
    """
    data = b"".join(vocab[i] for i in ids)
    return data.decode("utf-8", errors="replace")


def build_vocab(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    """The bytes of every token: ids 0..255 are single bytes, each merge joins two tokens."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in sorted(merges.items(), key=lambda kv: kv[1]):
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def train_merges(
    text: str, num_merges: int, pattern: str | re.Pattern = _SPLIT_RE, verbose: bool = False
) -> dict[tuple[int, int], int]:
    """Learn ``num_merges`` merges from ``text``; returns ``(a, b) -> new_id`` (256, 257, ...).

    The text is split into chunks; equal chunks are counted once with their
    frequency as a weight, which makes training much faster. Ties between equally
    frequent pairs go to the pair seen first, so training is deterministic.
    Stops early when no pair is left (every chunk is a single token).
    """
    chunk_counts = Counter(split_text(text, pattern))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    merges: dict[tuple[int, int], int] = {}
    for step in range(num_merges):
        counts: dict[tuple[int, int], int] = {}
        for ids, freq in zip(words, freqs):
            get_pair_counts(ids, counts, weight=freq)
        if not counts:
            break
        pair = max(counts, key=counts.get)  # the first of the most frequent pairs
        new_id = 256 + step
        merges[pair] = new_id
        words = [merge(ids, pair, new_id) if len(ids) > 1 else ids for ids in words]
        if verbose:
            print(f"merge {step + 1}/{num_merges}: {pair} -> {new_id} ({counts[pair]} occurrences)")
    return merges


class ByteBPE:
    """A byte-level BPE tokenizer: ``train``, ``encode``, ``decode``.

    Example::

        bpe = ByteBPE().train(text, vocab_size=512, special_tokens=["<|endoftext|>"])
        ids = bpe.encode("hello<|endoftext|>")        # list[int]
        assert bpe.decode(ids) == "hello<|endoftext|>"

    Attributes:
        merges: ``(a, b) -> new_id``, in rank order.
        vocab: ``id -> bytes`` for the 256 bytes and every merge.
        special_tokens: ``str -> id``; special tokens are never split or merged,
            and their ids follow the merges.
        pattern: the pre-tokenization regular expression.
    """

    def __init__(
        self,
        merges: dict[tuple[int, int], int] | None = None,
        special_tokens: list[str] | tuple[str, ...] = (),
        pattern: str = SPLIT_PATTERN,
    ):
        self.pattern = pattern
        self._split_re = re.compile(pattern)
        self.merges = dict(merges or {})
        self.vocab = build_vocab(self.merges)
        self._set_special_tokens(special_tokens)
        self._cache: dict[str, list[int]] = {}

    def _set_special_tokens(self, special_tokens) -> None:
        first = 256 + len(self.merges)
        self.special_tokens = {tok: first + i for i, tok in enumerate(special_tokens)}
        self.inverse_special_tokens = {i: tok for tok, i in self.special_tokens.items()}
        # A capturing group keeps the special tokens in re.split's output.
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if longest_first else None

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + special tokens."""
        return 256 + len(self.merges) + len(self.special_tokens)

    def train(
        self, text: str, vocab_size: int, special_tokens: list[str] | tuple[str, ...] = (), verbose: bool = False
    ) -> "ByteBPE":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``; returns ``self``."""
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(
                f"vocab_size must be at least 256 + {len(special_tokens)} special tokens, got {vocab_size}"
            )
        self.merges = train_merges(text, num_merges, self._split_re, verbose=verbose)
        self.vocab = build_vocab(self.merges)
        self._set_special_tokens(special_tokens)
        self._cache = {}
        return self

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text that holds no special token: split into chunks, encode each chunk."""
        ids: list[int] = []
        for chunk in self._split_re.findall(text):
            if chunk not in self._cache:  # words repeat a lot: encode each distinct chunk once
                self._cache[chunk] = encode(chunk, self.merges)
            ids.extend(self._cache[chunk])
        return ids

    def encode(self, text: str) -> list[int]:
        """``text -> list[int]``; special tokens written in the text become their ids."""
        if self._special_re is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for part in self._special_re.split(text):
            if part in self.special_tokens:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def decode(self, ids: list[int]) -> str:
        """``list[int] -> text``; bytes that are not valid UTF-8 become U+FFFD."""
        parts: list[bytes] = []
        for i in ids:
            if i in self.inverse_special_tokens:
                parts.append(self.inverse_special_tokens[i].encode("utf-8"))
            elif i in self.vocab:
                parts.append(self.vocab[i])
            else:
                raise ValueError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
        return b"".join(parts).decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token ``i`` (the UTF-8 of a special token's text)."""
        if i in self.inverse_special_tokens:
            return self.inverse_special_tokens[i].encode("utf-8")
        return self.vocab[i]

    def __repr__(self) -> str:
        specials = list(self.special_tokens)
        return f"ByteBPE(vocab_size={self.vocab_size}, merges={len(self.merges)}, special_tokens={specials})"

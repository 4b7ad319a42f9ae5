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
``encode_iterable``, ``merges``, ``vocab`` and optional special tokens.

Training and encoding exist twice: the textbook version, and a fast one that gives
exactly the same result (and is tested against it)::

    train_merges_naive(text, n)     recount every pair before each merge
    train_merges(text, n)           update the counts of the chunks a merge touches (a second
                                    for a few hundred merges on 100 kB)
    encode(text, merges)            rescan the sequence for every merge
    encode_chunk(text, merges)      a heap of pairs over a linked list: O(n log n)

``llm_course.tokenizer.hf`` does the same with Hugging Face ``tokenizers``, in Rust.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, OrderedDict, defaultdict
from typing import Iterable, Iterator

from llm_course.tokenizer.stream import check_token_ids, split_stream

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


# --- training -----------------------------------------------------------------------------------
#
# Both trainers below learn exactly the same merges; the first is the algorithm as written
# in a textbook, the second is the same algorithm made fast.
#
# Ties: when several pairs are equally frequent, the lexicographically greater pair of byte
# strings wins, ``(vocab[a], vocab[b])`` compared as a tuple (then the greater pair of ids, for
# two tokens with the same bytes). This is Stanford CS336's rule; it does not depend on the
# order in which pairs were counted, which is what lets a trainer update its counts
# incrementally and still agree with the reference.


def split_special(text: str, special_tokens: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Split ``text`` around special tokens; returns the pieces in between, the special tokens left out.

    ``split_special("a<|endoftext|>b", ["<|endoftext|>"]) == ["a", "b"]``. Training uses it so that
    a special token (and what is on either side of it) never takes part in a merge.
    """
    if not special_tokens:
        return [text]
    _check_special_tokens(special_tokens)
    longest_first = sorted(special_tokens, key=len, reverse=True)
    return re.split("|".join(map(re.escape, longest_first)), text)


def _check_special_tokens(special_tokens) -> None:
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be a list of str, got the str {special_tokens!r}")
    for t in special_tokens:
        if not isinstance(t, str) or not t:
            raise ValueError(f"special tokens must be non-empty strings, got {t!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be distinct, got {list(special_tokens)}")


def count_chunks(
    text: str, pattern: str | re.Pattern = _SPLIT_RE, special_tokens: list[str] | tuple[str, ...] = ()
) -> Counter:
    """``{chunk: number of occurrences}`` of the text's chunks, special tokens split out first."""
    chunk_counts: Counter = Counter()
    for piece in split_special(text, special_tokens):
        chunk_counts.update(split_text(piece, pattern))
    return chunk_counts


def _tie_key(pair: tuple[int, int], count: int, vocab: dict[int, bytes]) -> tuple:
    """What decides between pairs: the count, then the greater bytes, then the greater ids."""
    return count, vocab[pair[0]], vocab[pair[1]], pair


def train_merges_naive(
    text: str,
    num_merges: int,
    pattern: str | re.Pattern = _SPLIT_RE,
    verbose: bool = False,
    special_tokens: list[str] | tuple[str, ...] = (),
) -> dict[tuple[int, int], int]:
    """The textbook trainer: recount every pair of every chunk before each merge.

    Same arguments and result as :func:`train_merges`, which is much faster; this
    one is the reference it is tested against. Equal chunks are counted once with
    their frequency as a weight.
    """
    chunk_counts = count_chunks(text, pattern, special_tokens)
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    vocab = {i: bytes([i]) for i in range(256)}
    merges: dict[tuple[int, int], int] = {}
    for step in range(num_merges):
        counts: dict[tuple[int, int], int] = {}
        for ids, freq in zip(words, freqs):
            get_pair_counts(ids, counts, weight=freq)
        if not counts:
            break  # every chunk is a single token
        pair = max(counts, key=lambda p: _tie_key(p, counts[p], vocab))
        new_id = 256 + step
        merges[pair] = new_id
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        words = [merge(ids, pair, new_id) if len(ids) > 1 else ids for ids in words]
        if verbose:
            print(f"merge {step + 1}/{num_merges}: {pair} -> {new_id} ({counts[pair]} occurrences)")
    return merges


class _Candidate:
    """A heap entry for a pair. ``heapq`` pops the smallest entry, so ``<`` here means "wins"."""

    __slots__ = ("key", "pair", "count")

    def __init__(self, pair: tuple[int, int], count: int, vocab: dict[int, bytes]):
        self.pair, self.count = pair, count
        self.key = _tie_key(pair, count, vocab)

    def __lt__(self, other: "_Candidate") -> bool:
        return self.key > other.key


def train_merges(
    text: str,
    num_merges: int,
    pattern: str | re.Pattern = _SPLIT_RE,
    verbose: bool = False,
    special_tokens: list[str] | tuple[str, ...] = (),
) -> dict[tuple[int, int], int]:
    """Learn ``num_merges`` merges from ``text``; returns ``(a, b) -> new_id`` (256, 257, ...).

    Args:
        text: the training text.
        num_merges: how many merges to learn; fewer if every chunk becomes a single token first.
        pattern: the pre-tokenization regular expression (chunks that merges never cross).
        verbose: print each merge.
        special_tokens: strings such as ``"<|endoftext|>"`` that are cut out of the text
            before counting: they never take part in a merge, and neither do the
            characters on either side of them.

    A merge only changes the chunks that contain its pair, so instead of recounting
    every pair after each merge (:func:`train_merges_naive`), this keeps

    * the distinct chunks as token lists, each with its number of occurrences;
    * ``counts``: pair -> number of occurrences (weighted by the chunk counts);
    * ``where``: pair -> the chunks that contain it, so a merge visits only those;
    * a heap of candidate pairs, to find the most frequent pair without scanning them all.
      A pair whose count changes is pushed again; entries whose count is out of date
      are skipped when they come out.

    After each merge, the chunks that held the pair lose the counts of their old pairs
    and gain those of their new ones. Ties: see the comment above; the result is
    exactly that of :func:`train_merges_naive`.
    """
    chunk_counts = count_chunks(text, pattern, special_tokens)
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    vocab = {i: bytes([i]) for i in range(256)}
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (ids, freq) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where[pair].add(w)
    heap = [_Candidate(pair, n, vocab) for pair, n in counts.items()]
    heapq.heapify(heap)

    merges: dict[tuple[int, int], int] = {}
    for step in range(num_merges):
        while heap and heap[0].count != counts.get(heap[0].pair, 0):
            heapq.heappop(heap)  # out of date: the pair's count has changed since it was pushed
        if not heap:
            break  # every chunk is a single token
        best = heapq.heappop(heap)
        pair, new_id = best.pair, 256 + step
        merges[pair] = new_id
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]

        changed = set()
        for w in where.pop(pair):
            old = words[w]
            new = merge(old, pair, new_id)
            if len(new) == len(old):
                continue  # ``where`` lists chunks that once held the pair; this one no longer does
            freq = freqs[w]
            for p in zip(old, old[1:]):
                counts[p] -= freq
                changed.add(p)
            for p in zip(new, new[1:]):
                counts[p] = counts.get(p, 0) + freq
                changed.add(p)
                where[p].add(w)
            words[w] = new
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, _Candidate(p, counts[p], vocab))
            else:
                del counts[p]
        if verbose:
            print(f"merge {step + 1}/{num_merges}: {pair} -> {new_id} ({best.count} occurrences)")
    return merges


# --- encoding one long chunk fast -----------------------------------------------------------------


def encode_chunk(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Exactly :func:`encode`, in O(n log n) for a chunk of n bytes instead of O(n * merges).

    :func:`encode` rescans the whole sequence for every merge it applies: fine for a
    word, but a chunk of a megabyte (a text without spaces is one chunk) takes
    minutes. Here the tokens form a linked list, and a heap holds every neighbouring
    pair that has a merge, ordered by ``(rank, position)``. Popping the heap gives
    the same order as :func:`encode`: the lowest rank first and, within a rank, left
    to right (occurrences do not overlap). A merge creates new pairs only with the
    new token, whose merges have higher ranks; they are pushed, and entries made
    stale by a merge are skipped when they come out.

    ``merges`` must be well formed: a merge's new id is greater than both its ids.
    """
    ids: list[int | None] = list(text.encode("utf-8"))
    n = len(ids)
    nxt = list(range(1, n + 1))  # the next live token after position i (n: none)
    prv = list(range(-1, n - 1))  # the previous live token (-1: none)
    # A heap entry is one int, rank * stride + position: it sorts like (rank, position), faster.
    stride = n + 1
    heap = [merges[p] * stride + i for i, p in enumerate(zip(ids, ids[1:])) if p in merges]
    heapq.heapify(heap)
    while heap:
        rank, i = divmod(heapq.heappop(heap), stride)
        j = nxt[i]
        if ids[i] is None or j >= n or merges.get((ids[i], ids[j])) != rank:
            continue  # stale: the token at i was merged away, or it or its neighbour has changed
        ids[i], ids[j] = rank, None  # the merged token lives at i; j is gone
        k = nxt[i] = nxt[j]
        if k < n:
            prv[k] = i
            if (rank, ids[k]) in merges:
                heapq.heappush(heap, merges[rank, ids[k]] * stride + i)
        h = prv[i]
        if h >= 0 and (ids[h], rank) in merges:
            heapq.heappush(heap, merges[ids[h], rank] * stride + h)
    return [t for t in ids if t is not None]


# --- the tokenizer --------------------------------------------------------------------------------


def _check_merges(merges: dict[tuple[int, int], int]) -> None:
    """Merges must number their new ids 256, 257, ... and build only on earlier tokens."""
    for new_id, pair in enumerate(sorted(merges, key=merges.get), start=256):
        if merges[pair] != new_id:
            raise ValueError(
                f"merge ids must be 256, 257, ... without gaps; found {merges[pair]} for {pair}, expected {new_id}"
            )
        if not all(isinstance(t, int) and 0 <= t < new_id for t in pair):
            raise ValueError(f"the merge {pair} -> {new_id} must join two earlier tokens (ids below {new_id})")


class ByteBPE:
    """A byte-level BPE tokenizer: ``train``, ``encode``, ``decode``.

    Example::

        bpe = ByteBPE().train(text, vocab_size=512, special_tokens=["<|endoftext|>"])
        ids = bpe.encode("hello<|endoftext|>")        # list[int]
        assert bpe.decode(ids) == "hello<|endoftext|>"
        bpe.encode("<|endoftext|>", special_tokens=False)   # the same string as plain text
        for i in bpe.encode_iterable(open("big.txt")): ...  # a large file, a line at a time

    Attributes:
        merges: ``(a, b) -> new_id``, in rank order.
        vocab: ``id -> bytes`` for the 256 bytes and every merge.
        special_tokens: ``str -> id``; special tokens are never split or merged,
            and their ids follow the merges.
        pattern: the pre-tokenization regular expression.
        cache_size: how many distinct chunks' ids are kept (least recently used first out).
    """

    def __init__(
        self,
        merges: dict[tuple[int, int], int] | None = None,
        special_tokens: list[str] | tuple[str, ...] = (),
        pattern: str = SPLIT_PATTERN,
        cache_size: int = 1 << 16,
    ):
        self.pattern = pattern
        self._split_re = re.compile(pattern)
        self.merges = dict(merges or {})
        _check_merges(self.merges)
        self.vocab = build_vocab(self.merges)
        self._set_special_tokens(special_tokens)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def _set_special_tokens(self, special_tokens) -> None:
        _check_special_tokens(special_tokens)
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
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``; returns ``self``.

        The special tokens are cut out of the text before counting: a merge never
        joins part of ``<|endoftext|>`` or crosses one (see :func:`train_merges`).
        """
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(
                f"vocab_size must be at least 256 + {len(special_tokens)} special tokens, got {vocab_size}"
            )
        self.merges = train_merges(text, num_merges, self._split_re, verbose=verbose, special_tokens=special_tokens)
        self.vocab = build_vocab(self.merges)
        self._set_special_tokens(special_tokens)
        self._cache.clear()
        return self

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """One chunk's ids, through a least-recently-used cache (words repeat a lot)."""
        ids = self._cache.get(chunk)
        if ids is not None:
            self._cache.move_to_end(chunk)
            return ids
        ids = tuple(encode_chunk(chunk, self.merges))
        self._cache[chunk] = ids
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)  # the least recently used
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text as plain text (special-token strings included): split into chunks, encode each chunk."""
        ids: list[int] = []
        for chunk in self._split_re.findall(text):
            ids.extend(self._encode_chunk(chunk))
        return ids

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """``text -> list[int]``.

        Args:
            text: any string.
            special_tokens: True (the default): special-token strings written in the text
                (``"<|endoftext|>"``) become their ids. False: they are encoded as plain
                text, like any other characters. Use False for text you did not write (a
                chat user's message), so that it cannot end a message or start a new one.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if self._special_re is None or not special_tokens:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for part in self._special_re.split(text):
            if part in self.special_tokens:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def encode_iterable(
        self, chunks: Iterable[str], special_tokens: bool = True, buffer_chars: int = 1 << 16
    ) -> Iterator[int]:
        """Encode a stream of text (an open file, a generator of lines) lazily: yields the ids one by one.

        The ids are exactly those of ``encode("".join(chunks))``, but memory holds only
        about ``buffer_chars`` characters of text at a time. The text is cut just before
        whitespace that follows a non-space character (:func:`split_stream`), where the
        default ``pattern`` always ends a chunk; a custom pattern must do the same.
        """
        if special_tokens and any(re.search(r"\s", tok) for tok in self.special_tokens):
            raise ValueError("encode_iterable cannot stream special tokens that contain whitespace")
        for piece in split_stream(chunks, buffer_chars):
            yield from self.encode(piece, special_tokens=special_tokens)

    def decode(self, ids: Iterable[int]) -> str:
        """``list[int] -> text``; bytes that are not valid UTF-8 become U+FFFD.

        An id that is not in the vocabulary (out of range, negative, not an integer)
        raises a ValueError that names it and its position.
        """
        data = b"".join(self.token_bytes(i) for i in check_token_ids(ids, self.vocab_size))
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token ``i`` (the UTF-8 of a special token's text)."""
        if i in self.inverse_special_tokens:
            return self.inverse_special_tokens[i].encode("utf-8")
        return self.vocab[i]

    def __repr__(self) -> str:
        specials = list(self.special_tokens)
        return f"ByteBPE(vocab_size={self.vocab_size}, merges={len(self.merges)}, special_tokens={specials})"

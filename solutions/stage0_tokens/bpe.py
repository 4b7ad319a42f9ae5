"""Stage 0 exercises: byte-level BPE, the three core steps.

Byte-level BPE turns text into integers: the text's UTF-8 bytes (ints 0..255)
are the starting tokens, and each learned *merge* ``(a, b) -> new_id`` replaces
a pair of neighbouring tokens by one new token. The merge with the lowest
``new_id`` was learned first: that is its *rank*.

Write the three functions below, in this order:

* ``merge(ids, pair, new_id)``   replace one pair everywhere    (exercise bpe_merge)
* ``encode(text, merges)``       text -> token ids              (exercise bpe_encode)
* ``decode(ids, vocab)``         token ids -> text              (exercise bpe_decode)

Notebook ``00a_text_to_tokens`` walks through them; the course's own versions
are in ``llm_course/tokenizer/bpe.py`` (look there only once you are done).
Check your work with ``llm-course grade 0``.
"""

from __future__ import annotations


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``.

    Args:
        ids: a list of token ids, e.g. ``[1, 2, 3, 1, 2]``.
        pair: two ids ``(a, b)``: ``a`` directly followed by ``b`` is one occurrence.
        new_id: the id that replaces each occurrence.
    Returns:
        a NEW list (leave ``ids`` unchanged): ``merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]``.

    Scan from left to right; once two ids are merged, continue after them, so
    occurrences never overlap: ``merge([7, 7, 7], (7, 7), 9) == [9, 7]``.
    Mind a pair at the very end, and an empty or one-element list.

    Hint: a ``while`` loop over an index ``i`` that moves by 2 after a merge and by 1 otherwise.
    """
    # BEGIN EXERCISE bpe_merge
    # stub raises: "merge: replace each (a, b) in ids by new_id, left to right, in a new list"
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
    # END EXERCISE bpe_merge


def encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Encode ``text`` into token ids with learned BPE merges.

    Args:
        text: any string (accents, Chinese, emoji...).
        merges: ``{(a, b): new_id}``. A merge's rank is its ``new_id``: lower ids
            were learned first and must be applied first. Do not rely on the dict's
            order, and do not pick pairs by how often they occur.
    Returns:
        a list of ints.

    Steps:
        1. Start from the UTF-8 bytes of the text: ``list(text.encode("utf-8"))``
           ("é" is two bytes, an emoji four).
        2. Repeat: among the neighbouring pairs present in ``ids``, take the one
           whose merge has the lowest rank, and replace it everywhere with
           your ``merge``. Stop when no pair present has a merge (or fewer than 2 ids are left).
           A merge can create a pair that a later merge joins again, so keep going.

    Example: with ``merges = {(97, 98): 256, (256, 99): 257}``,
    ``encode("abcab", merges) == [257, 256]``.

    Hint: ``set(zip(ids, ids[1:]))`` are the pairs present; ``merges.get(p, float("inf"))``
    gives a pair that has no merge an infinite rank.
    """
    # BEGIN EXERCISE bpe_encode
    # stub raises: "encode: UTF-8 bytes, then apply the merges present, lowest new_id first"
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pairs = set(zip(ids, ids[1:]))
        pair = min(pairs, key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return ids
    # END EXERCISE bpe_encode


def decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """Turn token ids back into text.

    Args:
        ids: a list of token ids.
        vocab: ``{id: bytes}``: the bytes each token stands for, e.g. ``{104: b"h", 256: b"he"}``.
    Returns:
        the text, a str.

    Join the bytes of ALL the tokens first, then decode the joined bytes once
    with ``.decode("utf-8", errors="replace")``. One character can be split
    across tokens (an emoji is 4 bytes), so decoding token by token breaks it;
    and ids can form bytes that are not valid UTF-8 (a model can generate
    anything): those become the replacement character "\\ufffd" instead of
    raising an error.

    Hint: ``b"".join(...)``.
    """
    # BEGIN EXERCISE bpe_decode
    # stub raises: "decode: join the bytes of all the ids, then decode UTF-8 with errors=\"replace\""
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    # END EXERCISE bpe_decode

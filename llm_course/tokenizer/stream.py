"""What goes in and out of a tokenizer: streams of text, lists of ids.

    check_token_ids(ids, vocab_size)     the ids as ints, or a ValueError naming the bad one
    split_stream(lines)                  text cut at places where encoding may be split

Both the from-scratch :class:`~llm_course.tokenizer.bpe.ByteBPE` and the course's default
tokenizer (``llm_course.tokenizer.hf``) use them for ``decode`` and ``encode_iterable``.
"""

from __future__ import annotations

import operator
import re
from typing import Iterable, Iterator


def check_token_ids(ids: Iterable, vocab_size: int, op: str = "decode") -> list[int]:
    """``ids`` as a list of ints, each in ``0..vocab_size - 1``; else a ValueError naming the first bad one.

    A model (or a bug) can produce any number: an id out of range, negative, a float.
    Decoding must say so rather than drop it or wrap it around. Accepts anything that
    behaves as an integer (``int``, NumPy integers, one-element integer tensors).
    """
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{op} takes a sequence of token ids, got {type(ids).__name__}")
    ids = list(ids)
    if all(type(i) is int for i in ids) and (not ids or (min(ids) >= 0 and max(ids) < vocab_size)):
        return ids  # the usual case, checked fast
    out = []
    for pos, i in enumerate(ids):
        try:
            value = operator.index(i) if not isinstance(i, bool) else None
        except TypeError:
            value = None
        if value is None:
            raise ValueError(
                f"{op}: the id at position {pos} is {i!r} ({type(i).__name__}), not an integer; "
                f"token ids are integers in 0..{vocab_size - 1} (vocabulary of {vocab_size})"
            )
        if not 0 <= value < vocab_size:
            raise ValueError(
                f"{op}: token id {value} at position {pos} is out of range: "
                f"the vocabulary has {vocab_size} ids, 0..{vocab_size - 1}"
            )
        out.append(value)
    return out


# A safe place to cut a stream: just before a space, tab or newline that follows a character
# that is not whitespace. With GPT-2's pre-tokenization (ours, and that of Hugging Face's
# ByteLevel), a chunk ends there whatever comes next, and no chunk before it looks past it:
# whitespace can only start a chunk (" word") or be part of a run of whitespace. So the text on
# either side can be encoded separately and give the same ids as the whole.
_SAFE_CUT = re.compile(r"(?<=\S)[ \t\n\r]")


def split_stream(chunks: Iterable[str], min_chars: int = 1 << 16) -> Iterator[str]:
    """Regroup a stream of text (a file's lines, blocks read from it) into pieces cut at safe places.

    Encoding the pieces one by one gives exactly the ids of the whole text (see the comment
    above ``_SAFE_CUT``). Each piece holds at least ``min_chars`` characters (the last one
    excepted), so a tokenizer is called on blocks rather than on every line; memory holds
    about ``min_chars`` characters plus the longest stretch without a safe place (one line,
    usually).
    """
    pending: list[str] = []  # text read but not given out yet
    pending_chars = 0
    last_char = ""
    for chunk in chunks:
        if not isinstance(chunk, str):
            raise TypeError(f"encode_iterable takes an iterable of str (lines, blocks), got {type(chunk).__name__}")
        if not chunk:
            continue
        cut = -1
        for m in _SAFE_CUT.finditer(last_char + chunk):
            cut = m.start() - len(last_char)  # the last safe place in this chunk
        if cut >= 0 and pending_chars + cut >= min_chars:
            piece = "".join(pending) + chunk[:cut]
            if piece:
                yield piece
            pending, pending_chars = [chunk[cut:]], len(chunk) - cut
        else:
            pending.append(chunk)
            pending_chars += len(chunk)
        last_char = chunk[-1]
    if pending_chars:
        yield "".join(pending)

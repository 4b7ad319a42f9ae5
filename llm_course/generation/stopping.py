"""When a row stops: an end-of-sequence token, or a stop string in the text it wrote.

An EOS token is one id, checked on the device (:func:`eos_hits`). A stop string
(``"\\n\\n"``, ``"</answer>"``) is text, and text does not map to tokens one to one:
``"\\n\\n"`` may be one token, two, or the end of a longer one. So
:class:`StopStrings` decodes each unfinished row's new tokens and looks for the strings
in the text, on the host, once per step. The row stops on the token that completes a
string; that token is kept (it may hold text after the string, which ``cut_at_stop``
removes from a decoded text).
"""

from __future__ import annotations

import torch


def eos_ids(eos_token_id, device) -> torch.Tensor | None:
    """``eos_token_id`` (an int, a list of ints, or None) as a (E,) long tensor on ``device``, or None."""
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"generate: eos_token_id must be a token id (int >= 0) or a list of them, got {eos_token_id!r}")
    return torch.tensor(ids, dtype=torch.long, device=device)


def eos_hits(tokens: torch.Tensor, eos: torch.Tensor | None) -> torch.Tensor:
    """(B,) bool: True where ``tokens`` (B,) is one of the EOS ids (all False without any)."""
    if eos is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, eos)


class StopStrings:
    """Finds stop strings in the text each row has generated so far.

    Args:
        stop_strings: a str or a list of str, none empty.
        tokenizer: anything with ``decode(list[int]) -> str`` (the course's tokenizer, a
            ``tokenizers.Tokenizer``, a ``transformers`` tokenizer).
    """

    def __init__(self, stop_strings: str | list[str], tokenizer):
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not strings or not all(isinstance(s, str) and s for s in strings):
            raise ValueError(f"generate: stop_strings must be a non-empty str or a list of them, got {stop_strings!r}")
        if tokenizer is None or not hasattr(tokenizer, "decode"):
            raise ValueError("generate: stop_strings need a tokenizer (tokenizer=...) to turn the new tokens into text")
        self.strings = strings
        self.tokenizer = tokenizer

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def hits(self, new_tokens: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """(B,) bool: rows not yet finished whose new text (``new_tokens`` (B, n)) holds a stop string.

        Each earlier step looked at the text without the last token, so a string found now
        was completed by that token.
        """
        done = finished.tolist()
        hit = [False] * len(done)
        for b, row in enumerate(new_tokens.tolist()):
            if not done[b]:
                text = self.text(row)
                hit[b] = any(s in text for s in self.strings)
        return torch.tensor(hit, dtype=torch.bool, device=new_tokens.device)


def cut_at_stop(text: str, stop_strings: str | list[str] | None, keep: bool = True) -> str:
    """``text`` up to the first stop string (included when ``keep``); unchanged when none occurs."""
    if not stop_strings:
        return text
    strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
    found = [(text.find(s), s) for s in strings if s in text]
    if not found:
        return text
    start, s = min(found)
    return text[: start + len(s)] if keep else text[:start]

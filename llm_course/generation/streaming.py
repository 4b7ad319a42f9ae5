"""Show the text while it is being generated.

``generate(..., streamer=fn)`` calls ``fn(tokens)`` after every step with that step's
tokens, a (B,) tensor. :class:`TextStreamer` is such a function that prints the text.

Printing one token at a time is not as simple as ``print(tok.decode([t]))``:

* a byte-level BPE token can hold *part* of a character: "é" is two bytes, an emoji four,
  and they may arrive in different tokens. Decoded alone, a part is the replacement
  character "\\ufffd";
* some tokenizers decode a token differently depending on its neighbours (a leading
  space dropped at the start of a text, spaces cleaned up around punctuation).

So the streamer keeps the row's ids, decodes them all each time, and prints only what is
new since the last print; while the text ends with "\\ufffd" (a character not finished) it
waits for the next token. Decoding the whole row each step costs O(n) per step, nothing
next to the model's work.
"""

from __future__ import annotations

from typing import Callable


def _print_piece(text: str) -> None:
    """Write ``text`` to stdout at once, without a newline (in a terminal and in a notebook cell)."""
    print(text, end="", flush=True)


class TextStreamer:
    """Prints the text of one row of a generation as the tokens arrive.

    Args:
        tokenizer: anything with ``decode(ids, skip_special_tokens=...) -> str``.
        print_fn: called with each new piece of text (default: print it without a newline).
        skip_special_tokens: leave out ``<|endoftext|>``, ``<|im_end|>``, ... (default True).
        newline_at_end: ``end()`` prints a final newline (only with the default ``print_fn``).

    Attributes:
        token_ids: list[int], every id received.
        text: str, everything printed so far.
    """

    def __init__(
        self,
        tokenizer,
        print_fn: Callable[[str], object] | None = None,
        skip_special_tokens: bool = True,
        newline_at_end: bool = True,
    ):
        self.tokenizer = tokenizer
        self.print_fn = print_fn if print_fn is not None else _print_piece
        self.skip_special_tokens = skip_special_tokens
        self.newline_at_end = newline_at_end and print_fn is None
        self.token_ids: list[int] = []
        self.text = ""

    def __call__(self, tokens) -> None:
        """Receive one step's tokens: a (1,) tensor (one row), a one-element list or an int."""
        ids = tokens.tolist() if hasattr(tokens, "tolist") else tokens
        ids = [ids] if isinstance(ids, int) else list(ids)
        if len(ids) != 1:
            raise ValueError(
                f"TextStreamer prints one row, but this step has {len(ids)} tokens (a batch of {len(ids)}); "
                "generate one prompt at a time, or pass your own streamer function for a batch"
            )
        self.token_ids += ids
        text = self._decode()
        if not text.endswith("\ufffd"):  # else: a character not finished yet, wait for its other bytes
            self._emit(text)

    def end(self) -> None:
        """Print what is left (even an unfinished character), then a newline."""
        self._emit(self._decode())
        if self.newline_at_end:
            self.print_fn("\n")

    def _decode(self) -> str:
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=self.skip_special_tokens)

    def _emit(self, text: str) -> None:
        # Normally ``text`` extends what was printed; if the tokenizer changed earlier text
        # (a rare clean-up), what is printed cannot be taken back: print only the part beyond it.
        new = text[len(self.text) :]
        if new:
            self.print_fn(new)
            self.text = self.text + new


class TokenCollector:
    """A streamer that keeps every step's tokens: ``steps`` is a list of (B,) lists (handy in tests)."""

    def __init__(self):
        self.steps: list[list[int]] = []

    def __call__(self, tokens) -> None:
        self.steps.append(tokens.tolist())


"""Stage 4 exercise: pack documents into training blocks (exercise pack_documents).

A language model is trained on fixed-size blocks of T tokens, but documents have
every length. *Packing* joins them into one long stream, each document followed
by the end-of-text token EOS (so the model learns where a text stops and that
what follows is unrelated), and cuts the stream into blocks:

    docs      [a0 a1 a2]  [b0 b1]  [c0 c1 c2 c3]
    stream    a0 a1 a2 EOS b0 b1 EOS c0 c1 c2 c3 EOS          (12 tokens)
    block_size = 3: blocks of block_size + 1 = 4 tokens, each starting where
    the previous one ended (they share one token):
              [a0 a1 a2 EOS] [EOS b0 b1 EOS] [EOS c0 c1 c2]    (c3 EOS dropped)

A block of T + 1 tokens gives T training positions: the input is its first T
tokens and the label of position t is the token that follows it (the model
predicts token t + 1 from tokens 0..t):

    input_ids = block[:-1]      labels = block[1:]

Block i starts at token ``i * T`` of the stream, so consecutive blocks overlap
by one token: the last label of block i is the first input of block i + 1, and
every pair (token, next token) of the stream is trained on exactly once. The
tokens after the last full block are dropped.

The course's data pipeline (``llm_course/data/pretrain.py``) packs the same way
and shuffles the blocks. Check your work with ``.venv/bin/llm-course grade 4``.
"""

from __future__ import annotations

import torch


def pack_documents(docs: list[list[int]], block_size: int, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Join ``docs`` with EOS after each one and cut the stream into (input, label) blocks.

    Args:
        docs: token ids of each document (a document may be empty: it still adds its EOS).
        block_size: T, the number of positions of a training block (>= 1).
        eos_id: the end-of-text token, appended after every document.

    Returns:
        ``(input_ids, labels)``, both (N, T) int64, with N = (L - 1) // T for a
        stream of L tokens (0 blocks, shape (0, T), when L <= T): block i is
        ``stream[i * T : i * T + T + 1]``; ``input_ids[i] = block[:-1]``,
        ``labels[i] = block[1:]``.

    Hint: build the stream as one tensor (``torch.tensor`` of the concatenated
    lists), then ``stream.unfold(0, T + 1, T)`` gives the (N, T + 1) blocks, or
    take ``stream[: N * T]`` and ``stream[1 : N * T + 1]`` and ``view`` them as (N, T).
    """
    # BEGIN EXERCISE pack_documents
    # stub raises: "pack_documents: stream = docs joined with EOS after each; N = (len - 1) // T blocks; input_ids = stream[:N*T], labels = stream[1:N*T+1], each viewed (N, T)"
    T = int(block_size)
    stream = torch.tensor([t for doc in docs for t in (*doc, eos_id)], dtype=torch.long)  # (L,)
    n = max(0, (stream.numel() - 1) // T)  # full blocks of T + 1 tokens, each sharing one with the next
    input_ids = stream[: n * T].view(n, T)  # (N, T)
    labels = stream[1 : n * T + 1].view(n, T)  # (N, T): the next token of each input
    return input_ids, labels
    # END EXERCISE pack_documents

"""From token lists to tensors: a padded ``(B, T)`` batch and its attention mask.

Texts encode to lists of different lengths, but a model takes one rectangular
tensor. Padding fills the short rows with ``pad_id``; the attention mask says
which positions are real (1) and which are padding (0), so that attention and
the loss can ignore the padding::

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    ids  = [[5, 6, 7],        mask = [[1, 1, 1],
            [8, 0, 0]]                [1, 0, 0]]
"""

from __future__ import annotations

import torch


def pad_batch(
    sequences: list[list[int]],
    pad_id: int,
    max_len: int | None = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into a padded batch.

    Args:
        sequences: B lists of token ids.
        pad_id: the id written into padding positions.
        max_len: T; longer sequences are truncated (their first ``max_len`` ids are
            kept). Default: the longest sequence.
        padding_side: "right" (for training) or "left" (for generation, so that every
            row's last position is a real token).
    Returns:
        ``input_ids``: int64 tensor (B, T); ``attention_mask``: int64 tensor (B, T), 1 on real tokens.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    T = max_len if max_len is not None else max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for b, seq in enumerate(sequences):
        seq = list(seq)[:T]
        n = len(seq)
        if n == 0:
            continue
        cols = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[b, cols] = torch.tensor(seq, dtype=torch.long)
        attention_mask[b, cols] = 1
    return input_ids, attention_mask

"""Stage 5 exercise: the assistant-only loss mask of supervised fine-tuning (exercise sft_labels).

Fine-tuning a chat model trains it to *write the assistant's replies*. The user's
messages are given at inference time, and so is the markup that opens a reply: the
chat template's generation prompt ends with ``<|im_start|>assistant\\n`` and the model
continues from there. So the loss counts only the tokens the model will have to write:
each reply's content and the ``<|im_end|>`` that closes it (the model must learn to
stop). Every other position gets the label -100, which ``F.cross_entropy(...,
ignore_index=-100)`` skips.

A conversation arrives as *pieces* of token ids, each with a kind (this is what
``llm_course.data.sft.chat_pieces`` returns for a real chat)::

    kind        text of the piece (ChatML)            trained?
    template    "<|im_start|>user\\n"                   no
    prompt      "Sort: 3 1 2"                          no   (system or user content)
    end         "<|im_end|>"                           no   (it closes a user message)
    template    "\\n<|im_start|>assistant\\n"            no   (the header: given at inference)
    assistant   "1 2 3"                                YES
    end         "<|im_end|>"                           YES  (it closes an assistant message)
    template    "\\n"                                   no

The ids of the conversation are the pieces one after the other. A token is *trained*
when it belongs to an ``assistant`` piece or to an ``end`` piece that directly follows
an ``assistant`` piece.

Training rows have a fixed length: ``block_size + 1`` tokens (longer conversations are
cut, shorter ones padded with ``pad_id``), and, as in pretraining, the labels are
already shifted: position t predicts token t + 1, so

    input_ids = row[:-1]
    labels[t] = row[t + 1]   if token t + 1 is trained (and not padding)
              = -100         otherwise

Check your work with ``.venv/bin/llm-course grade 5``.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def sft_labels(pieces: list[list[int]], kinds: list[str], block_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training row of one conversation: ``(input_ids, labels)``, labels -100 except on the reply tokens.

    Args:
        pieces: the token ids of each piece of the conversation, in order (a piece may be empty).
        kinds: one of "template", "prompt", "assistant", "end" per piece (see the module docstring).
        block_size: T. The row holds T + 1 tokens: the conversation's first T + 1 tokens,
            then ``pad_id`` up to T + 1 when it is shorter.
        pad_id: the padding token (``<|endoftext|>``); a padded position is never trained.

    Returns:
        ``(input_ids, labels)``, both (T,) int64: ``input_ids = row[:-1]``;
        ``labels[t] = row[t + 1]`` when token t + 1 of the row is trained, else -100.
        Trained tokens: those of every ``assistant`` piece, and of an ``end`` piece that
        comes right after an ``assistant`` piece; nothing else (not the header before a
        reply, not the ``\\n`` after ``<|im_end|>``, not the padding).

    Hint: build two lists side by side, the ids and a True/False "trained" flag per
    token; cut or pad both to T + 1 (padding flagged False); then
    ``torch.where(trained[1:], row[1:], -100)``.
    """
    # Your code here (exercise sft_labels)
    raise NotImplementedError("sft_labels: flag each token (assistant pieces and the end right after one), cut/pad ids and flags to T + 1, input_ids = row[:-1], labels = where(flag[1:], row[1:], -100)")

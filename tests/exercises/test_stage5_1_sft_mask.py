"""Graded tests of stage 5: the assistant-only loss mask (exercises/stage5_finetune/sft_mask.py).

``sft_labels`` is checked against a reference written here token by token (the pieces
concatenated, each token flagged trained when it is assistant content or the <|im_end|>
right after it, the row cut or padded to T + 1, labels[t] = row[t + 1] where token t + 1 is
trained, else -100): on the hand example of the docstring, on random multi-turn
conversations, on a real chat rendered by the course's chat template, with padding and
with truncation.

A wrong answer is compared with the usual mistakes (training on the prompt as well,
training the ``<|im_start|>assistant\\n`` header, forgetting the <|im_end|>, training every
<|im_end|>, the mask one position off either way at the turn boundary, labels not shifted, padding
not masked) and the failure names the one it matches.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.grading.checks import which_mistake

TOPIC = "stage5_finetune/sft_mask"

sft_mask_exercise = pytest.mark.exercise("sft_labels", stage=5, points=2, title="The assistant-only loss mask of SFT")

PAD, IM_START, IM_END, NL = 0, 1, 2, 9


def reference(pieces, kinds, T, pad_id, *, train="assistant", end="after assistant", header=False, flag_shift=1,
              shift=1, mask_padding=True):  # fmt: skip
    """(input_ids, labels) as tensors; the keyword arguments make the usual wrong variants."""
    ids, trained = [], []
    for i, (piece, kind) in enumerate(zip(pieces, kinds)):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else None
        prev = kinds[i - 1] if i > 0 else None
        on = kind == "assistant" if train == "assistant" else True
        if kind == "end":
            on = {"after assistant": prev == "assistant", "never": False, "always": True}[end] or train != "assistant"
        if header and kind == "template" and nxt == "assistant":
            on = True
        ids += list(piece)
        trained += [on] * len(piece)
    ids, trained = ids[: T + 1], trained[: T + 1]
    n_pad = T + 1 - len(ids)
    row = ids + [pad_id] * n_pad
    flags = trained + [not mask_padding] * n_pad
    x = torch.tensor(row[:T], dtype=torch.long)
    labels = []
    for t in range(T):
        target = row[t + shift] if t + shift <= T else pad_id
        flag = flags[t + flag_shift] if 0 <= t + flag_shift <= T else False
        labels.append(target if flag else -100)
    return x, torch.tensor(labels, dtype=torch.long)


MISTAKES = [
    (dict(train="everything"), "every token is trained, the prompt too: only the assistant's content and the <|im_end|> right "
                               "after it get labels; everything else is -100."),
    (dict(header=True), "the reply's header (<|im_start|>assistant\\n) is trained: it is given by the chat template at "
                        "inference, so its tokens get -100; only the content and its <|im_end|> are trained."),
    (dict(end="never"), "the <|im_end|> after a reply is not trained: the model must learn to stop, so that token is a "
                        "target too."),
    (dict(end="always"), "every <|im_end|> is trained, those closing user and system messages too: only the one right after "
                         "an assistant piece is."),
    (dict(flag_shift=0), "the mask is one position late at the turn boundary: the reply's first token is not trained and the "
                         "token after <|im_end|> is; position t predicts token t + 1, so keep its label when token t + 1 "
                         "is trained (trained[t + 1], not trained[t])."),
    (dict(flag_shift=2), "the mask is one position early at the turn boundary: the header's last token is trained and the "
                         "<|im_end|> is not; position t's label is row[t + 1], kept when token t + 1 is trained."),
    (dict(shift=0, flag_shift=0), "the labels are not shifted: labels[t] must be row[t + 1], the token that *follows* "
                                  "position t (as in pretraining), not the input token itself."),
    (dict(mask_padding=False), "the padding is trained: a padded position's label must be -100, not pad_id."),
]


def check(fn, pieces, kinds, T, pad_id=PAD):
    out = fn([list(p) for p in pieces], list(kinds), T, pad_id)
    assert isinstance(out, tuple) and len(out) == 2, "sft_labels must return a tuple (input_ids, labels)."
    x, y = out
    for name, t in (("input_ids", x), ("labels", y)):
        assert isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}."
        assert t.dtype == torch.long, f"{name} must be int64 (torch.long), got {t.dtype}."
        assert t.shape == (T,), f"{name} must have shape (T,) = ({T},), got {tuple(t.shape)}."
    ex_x, ex_y = reference(pieces, kinds, T, pad_id)
    assert torch.equal(x, ex_x), (f"input_ids are not the row's first T tokens (the pieces one after the other, padded "
                                  f"with pad_id): got {x.tolist()}, expected {ex_x.tolist()}.")  # fmt: skip
    if not torch.equal(y, ex_y):
        wrong = [(lambda kw=kw: reference(pieces, kinds, T, pad_id, **kw)[1], sentence) for kw, sentence in MISTAKES]
        sentence = which_mistake(y, ex_y, wrong, atol=0.5, rtol=0.0)
        t = int((y != ex_y).nonzero()[0])
        raise AssertionError(sentence or f"labels[{t}] is {int(y[t])}, expected {int(ex_y[t])} (got {y.tolist()}, "
                                         f"expected {ex_y.tolist()}).")  # fmt: skip
    return x, y


def turn(role, content, *, header_ids):
    """The pieces of one ChatML message: header, content, <|im_end|>, newline."""
    return [([IM_START, *header_ids, NL], "template"), (content, "assistant" if role == "assistant" else "prompt"),
            ([IM_END], "end"), ([NL], "template")]  # fmt: skip


def conversation(rng, n_turns, vocab=(10, 200)):
    out = []
    for k in range(n_turns):
        role = ["system", "user", "assistant"][0 if k == 0 and bool(torch.randint(0, 2, (), generator=rng)) else 1 + k % 2]
        content = torch.randint(*vocab, (int(torch.randint(0, 6, (), generator=rng)),), generator=rng).tolist()
        out += turn(role, content, header_ids=[300 + ["system", "user", "assistant"].index(role)])
    merged = []  # ChatML joins the "\n" after <|im_end|> with the next header into one template piece
    for piece, kind in out:
        if merged and kind == "template" and merged[-1][1] == "template":
            merged[-1] = (merged[-1][0] + piece, "template")
        else:
            merged.append((piece, kind))
    return [p for p, _ in merged], [k for _, k in merged]


@sft_mask_exercise
def test_the_docstring_example(impl):
    fn = impl.load(TOPIC).sft_labels
    pieces = [[IM_START, 11, NL], [21, 22, 23], [IM_END], [NL, IM_START, 12, 13, NL], [31, 32], [IM_END], [NL]]
    kinds = ["template", "prompt", "end", "template", "assistant", "end", "template"]
    x, y = check(fn, pieces, kinds, 16)
    assert y.tolist() == [-100] * 11 + [31, 32, IM_END] + [-100] * 2  # the reply, its <|im_end|>, nothing else


@sft_mask_exercise
@pytest.mark.parametrize("n_turns", [2, 3, 5, 8])
def test_random_conversations(impl, rng, n_turns):
    fn = impl.load(TOPIC).sft_labels
    for _ in range(4):
        pieces, kinds = conversation(rng, n_turns)
        length = sum(len(p) for p in pieces)
        check(fn, pieces, kinds, length + int(torch.randint(0, 6, (), generator=rng)), pad_id=int(torch.randint(0, 3, (), generator=rng)))


@sft_mask_exercise
def test_two_replies_and_an_empty_one(impl):
    """An empty reply still trains its <|im_end|> (stop at once); each reply is trained, the user turn between them not."""
    fn = impl.load(TOPIC).sft_labels
    pieces = [[IM_START, 5, NL], [40, 41], [IM_END], [NL, IM_START, 6, NL], [], [IM_END], [NL, IM_START, 5, NL], [42],
              [IM_END], [NL, IM_START, 6, NL], [50, 51, 52], [IM_END], [NL]]  # fmt: skip
    kinds = ["template", "prompt", "end", "template", "assistant", "end", "template", "prompt", "end", "template",
             "assistant", "end", "template"]  # fmt: skip
    x, y = check(fn, pieces, kinds, 30)
    assert sorted(t for t in y.tolist() if t != -100) == sorted([IM_END, 50, 51, 52, IM_END])


@sft_mask_exercise
def test_padding_and_truncation(impl, rng):
    fn = impl.load(TOPIC).sft_labels
    pieces, kinds = conversation(rng, 4)
    length = sum(len(p) for p in pieces)
    check(fn, pieces, kinds, length + 20, pad_id=PAD)  # mostly padding
    check(fn, pieces, kinds, length - 1)  # exactly one row: T + 1 = length
    for cut in (length // 2, length - 3, 3):
        check(fn, pieces, kinds, cut)  # longer than a row: the first T + 1 tokens


@sft_mask_exercise
def test_a_real_chat_with_the_course_tokenizer(impl):
    """The pieces of a chat rendered by the course's chat template (llm_course.data.sft.chat_pieces)."""
    from llm_course.data.sft import chat_pieces
    from llm_course.tokenizer import load_tokenizer

    fn = impl.load(TOPIC).sft_labels
    tok = load_tokenizer()
    chat = [{"role": "system", "content": "Answer with the result only."}, {"role": "user", "content": "Sort: 3 1 2"},
            {"role": "assistant", "content": "1 2 3"}, {"role": "user", "content": "Reverse: a b"},
            {"role": "assistant", "content": "b a"}]  # fmt: skip
    pieces = chat_pieces(chat, tok)
    ids, kinds = [p for _, p in pieces], [k for k, _ in pieces]
    x, y = check(fn, ids, kinds, 64, pad_id=tok.eos_token_id)
    assert tok.decode([t for t in y.tolist() if t != -100]) == "1 2 3<|im_end|>b a<|im_end|>"

"""Graded tests of stage 4: packing documents into training blocks (exercises/stage4_training/packing.py).

``pack_documents`` is checked against a reference written here token by token
(the stream of documents each followed by EOS, block i = stream[i T : i T + T + 1],
inputs = block[:-1], labels = block[1:], the remainder dropped), on the hand
example of the exercise's docstring, on random documents (empty ones included),
with block_size 1, a stream that fits exactly, and a stream too short for one
block. A property check follows: every (token, next token) pair of the stream
appears exactly once.

A wrong answer is compared with the usual mistakes (blocks that do not share a
token, so a pair is lost at each edge; blocks that overlap by two, so tokens are
trained twice; no EOS, or EOS before each document instead of after; labels
equal to the inputs; the remainder padded instead of dropped) and the failure
names the one it matches exactly.
"""

from __future__ import annotations

import pytest
import torch

TOPIC = "stage4_training/packing"

packing_exercise = pytest.mark.exercise("pack_documents", stage=4, points=2, title="Packing documents into training blocks")

EOS = 0


def reference(docs, T, eos_id, *, stride=None, eos="after", shift=1, remainder="drop"):
    """(input_ids, labels) as lists of lists; the keyword arguments make the usual wrong variants."""
    stream = []
    for doc in docs:
        if eos == "before":
            stream.append(eos_id)
        stream.extend(doc)
        if eos == "after":
            stream.append(eos_id)
    stride = T if stride is None else stride
    inputs, labels = [], []
    i = 0
    while i + T + (shift > 0) <= len(stream) or (remainder == "pad" and i + 1 < len(stream)):
        block = stream[i : i + T + shift]
        block = block + [eos_id] * (T + shift - len(block))
        inputs.append(block[:T])
        labels.append(block[shift : shift + T])
        i += stride
    return inputs, labels


MISTAKES = [
    (dict(stride="T+1"), "the blocks do not overlap: block i must start at token i * T, so that its last label is the next block's "
                         "first input; with blocks of T + 1 tokens laid end to end the pair across each edge is lost."),
    (dict(stride="T-1"), "the blocks overlap by two tokens: block i starts at token i * T (not i * (T - 1)), so each token is an "
                         "input exactly once."),
    (dict(eos="none"), "there is no EOS between the documents: append eos_id after every document (the last one too)."),
    (dict(eos="before"), "EOS is put before each document; put it after each one (the model learns to end a text)."),
    (dict(shift=0), "the labels are the inputs themselves: the label of position t is the *next* token, labels = block[1:]."),
    (dict(remainder="pad"), "the tokens after the last full block are kept (padded); drop them: N = (L - 1) // T blocks."),
]


def _mistake(got, docs, T, eos_id):
    """The sentence of the mistake that gives exactly ``got``, or None."""
    right = reference(docs, T, eos_id)
    for kw, sentence in MISTAKES:
        kw = dict(kw)
        if isinstance(kw.get("stride"), str):
            kw["stride"] = T + 1 if kw["stride"] == "T+1" else T - 1
            if kw["stride"] < 1:
                continue
        wrong = reference(docs, T, eos_id, **kw)
        if wrong != right and got == wrong:
            return sentence
    return None


def check(fn, docs, T, eos_id=EOS):
    out = fn(docs, T, eos_id)
    assert isinstance(out, tuple) and len(out) == 2, "pack_documents must return a tuple (input_ids, labels)."
    x, y = out
    for name, t in (("input_ids", x), ("labels", y)):
        assert isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}."
        assert t.dtype == torch.long, f"{name} must be int64 (torch.long), got {t.dtype}."
        assert t.dim() == 2 and t.shape[1] == T, f"{name} must be (N, T) with T = block_size = {T}, got shape {tuple(t.shape)}."
    exp_x, exp_y = reference(docs, T, eos_id)
    got = (x.tolist(), y.tolist())
    if got != (exp_x, exp_y):
        sentence = _mistake(got, docs, T, eos_id)
        if sentence:
            raise AssertionError(sentence)
        if len(got[0]) != len(exp_x):
            n_tokens = sum(len(d) + 1 for d in docs)
            raise AssertionError(f"{len(got[0])} blocks instead of {len(exp_x)}: a stream of {n_tokens} tokens gives "
                                 f"(L - 1) // T = {len(exp_x)} blocks of T + 1 = {T + 1} tokens that share one token.")  # fmt: skip
        for what, g, e in (("input_ids", got[0], exp_x), ("labels", got[1], exp_y)):
            for i, (gr, er) in enumerate(zip(g, e)):
                if gr != er:
                    raise AssertionError(f"{what}[{i}] is {gr}, expected {er} (block {i} is stream[{i} * T : {i} * T + T + 1]).")
    return x, y


def random_docs(rng, n, max_len=12, vocab=50):
    lengths = torch.randint(0, max_len + 1, (n,), generator=rng).tolist()
    return [torch.randint(1, vocab, (k,), generator=rng).tolist() for k in lengths]


@packing_exercise
def test_the_docstring_example(impl, rng):
    fn = impl.load(TOPIC).pack_documents
    docs = [[11, 12, 13], [21, 22], [31, 32, 33, 34]]
    x, y = check(fn, docs, 3, EOS)
    assert x.tolist() == [[11, 12, 13], [EOS, 21, 22], [EOS, 31, 32]]  # what the docstring shows


@packing_exercise
@pytest.mark.parametrize("T", [1, 4, 7, 16])
def test_random_documents(impl, rng, T):
    fn = impl.load(TOPIC).pack_documents
    docs = random_docs(rng, 9)
    docs.insert(3, [])  # an empty document still adds its EOS
    check(fn, docs, T, eos_id=int(torch.randint(50, 60, (), generator=rng)))


@packing_exercise
def test_a_stream_that_fits_exactly(impl, rng):
    """L = N * T + 1 tokens: nothing is left over, the last label is the stream's last token (the final EOS)."""
    fn = impl.load(TOPIC).pack_documents
    T = 5
    docs = [torch.randint(1, 50, (6,), generator=rng).tolist(), torch.randint(1, 50, (8,), generator=rng).tolist()]  # 16 = 3 * 5 + 1
    x, y = check(fn, docs, T)
    assert x.shape[0] == 3 and y[-1, -1].item() == EOS


@packing_exercise
def test_too_short_for_one_block(impl, rng):
    fn = impl.load(TOPIC).pack_documents
    for docs in ([[5, 6, 7]], [], [[]]):  # 4, 0 and 1 tokens with T = 4: no block of 5
        x, y = check(fn, docs, 4)
        assert x.shape == (0, 4) and y.shape == (0, 4), f"{docs}: no full block, so (0, T) tensors, got {tuple(x.shape)}"


@packing_exercise
def test_every_pair_of_the_stream_is_trained_once(impl, rng):
    """Count the (input, label) pairs: each (token, next token) of the stream exactly once, up to the dropped tail."""
    fn = impl.load(TOPIC).pack_documents
    T = 6
    docs = [[1000 * d + i for i in range(1, n + 1)] for d, n in enumerate(torch.randint(1, 10, (8,), generator=rng).tolist())]
    x, y = check(fn, docs, T, eos_id=-1)
    stream = [t for doc in docs for t in (*doc, -1)]
    n = x.numel()
    pairs = sorted(zip(x.flatten().tolist(), y.flatten().tolist()))
    assert pairs == sorted(zip(stream[:n], stream[1 : n + 1]))

"""SFT data (llm_course.data.sft): the assistant-only mask, padded and packed rows, errors, order and resume.

The mask is checked against an independent computation: the chat template rendered (in
Jinja) for the prefix of the conversation up to each assistant turn with the generation
prompt, the whole text encoded at once; the trained tokens of a turn are those that the full
conversation has after that prefix, up to and including the first <|im_end|>.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from llm_course.data.pretrain import DataError
from llm_course.data.sft import (
    IGNORE_INDEX, SFTTruncationWarning, build_sft_data, chat_pieces, conversation_mask,
)  # fmt: skip
from llm_course.generation.chat import apply_chat_template
from llm_course.tokenizer import load_tokenizer

T = 64


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def records(n: int, seed: int = 0) -> list[dict]:
    """n small chats; record k's first user message says "item k" (to find it in a batch)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        a, b = (int(v) for v in torch.randint(0, 50, (2,), generator=g))
        msgs = [{"role": "system", "content": "Be brief."}] if k % 3 == 0 else []
        msgs += [{"role": "user", "content": f"item {k}: add {a} and {b}"}, {"role": "assistant", "content": str(a + b)}]
        if k % 4 == 1:
            msgs += [{"role": "user", "content": "and doubled?"}, {"role": "assistant", "content": str(2 * (a + b))}]
        out.append({"messages": msgs})
    return out


def write(path, recs) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return str(path)


def reference_mask(messages, tok) -> tuple[list[int], list[bool]]:
    """The independent computation (see the module docstring)."""
    full = tok.encode(apply_chat_template(messages, add_generation_prompt=False))
    trained = [False] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tok.encode(apply_chat_template(messages[:i], add_generation_prompt=True))
        assert full[: len(prefix)] == prefix, "the prompt with the generation prompt is a prefix of the conversation"
        end = full.index(tok.im_end_id, len(prefix))
        for j in range(len(prefix), end + 1):
            trained[j] = True
    return full, trained


def reference_row(examples, block_size, pad_id=0):
    """(input_ids, labels) of examples concatenated and padded to block_size + 1 tokens."""
    ids = [t for e in examples for t in e[0]]
    trained = [f for e in examples for f in e[1]]
    ids += [pad_id] * (block_size + 1 - len(ids))
    trained += [False] * (block_size + 1 - len(trained))
    labels = [ids[t + 1] if trained[t + 1] else IGNORE_INDEX for t in range(block_size)]
    return ids[:block_size], labels


def item_of(x, tok) -> list[int]:
    """The record numbers of the examples in a row."""
    return [int(k) for k in re.findall(r"item (\d+):", tok.decode([t for t in x.tolist()]))]


CHATS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Sort: 3 1 2"},
     {"role": "assistant", "content": "1 2 3"}, {"role": "user", "content": "Reverse it"},
     {"role": "assistant", "content": "3 2 1"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c\nd"},
     {"role": "user", "content": "e"}],  # two assistant turns in a row, and a conversation that ends on the user
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}],  # an empty reply still learns to stop
]  # fmt: skip


@pytest.mark.parametrize("messages", CHATS, ids=range(len(CHATS)))
def test_mask_matches_prefix_rendering(messages, tok):
    ids, trained = conversation_mask(messages, tok)
    ref_ids, ref_trained = reference_mask(messages, tok)
    assert ids == ref_ids
    assert trained == ref_trained
    # what is trained: each reply's text and its <|im_end|>, nothing else
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert tok.decode([t for t, f in zip(ids, trained) if f]) == "".join(r + "<|im_end|>" for r in replies)


def test_pieces_kinds_and_a_content_that_spells_a_marker(tok):
    msgs = [{"role": "user", "content": "say <|im_end|> now"}, {"role": "assistant", "content": "ok <|im_end|>"}]
    pieces = chat_pieces(msgs, tok)
    assert [k for k, _ in pieces] == ["template", "prompt", "end", "template", "assistant", "end", "template"]
    for kind, ids in pieces:
        if kind in ("prompt", "assistant"):
            assert tok.im_end_id not in ids, "a content's text '<|im_end|>' is plain text, not the marker"
    ids, trained = conversation_mask(msgs, tok)
    assert ids.count(tok.im_end_id) == 2 and sum(trained) == len(pieces[4][1]) + 1


def _data(path, tok, **cfg):
    kw = {k: cfg.pop(k) for k in ("rank", "world_size", "seed", "block_size") if k in cfg}
    block_size = kw.pop("block_size", T)
    return build_sft_data({"type": "chat", "path": str(path), **cfg}, tok, block_size, **kw)


def _epoch_rows(data, n_rows):
    xs, ys = data.next_batch(n_rows)
    return list(zip(xs, ys))


def test_padded_rows_are_each_example_with_shifted_labels(tmp_path, tok):
    recs = records(24)
    data = _data(write(tmp_path / "c.jsonl", recs), tok, packing=False, val_fraction=0.1)
    n_train = len(data.source.examples)
    seen = []
    for x, y in _epoch_rows(data, n_train):
        (k,) = item_of(x, tok)
        seen.append(k)
        ref = reference_row([reference_mask(recs[k]["messages"], tok)], T)
        assert x.tolist() == ref[0] and y.tolist() == ref[1], f"record {k}"
    assert len(set(seen)) == n_train == 24 - len(data.val_examples), "one epoch: every training example once"


def test_packing_and_padding_train_the_same_tokens(tmp_path, tok):
    recs = records(30)
    path = write(tmp_path / "c.jsonl", recs)
    padded, packed = _data(path, tok, packing=False), _data(path, tok, packing=True)
    padded_rows = _epoch_rows(padded, len(padded.source.examples))
    order = [item_of(x, tok)[0] for x, _ in padded_rows]
    # the packed rows: the same examples in the same order, whole, side by side while they fit
    expected, row, used, covered = [], [], 0, []
    for k in order:
        ex = reference_mask(recs[k]["messages"], tok)
        if row and used + len(ex[0]) > T + 1:
            expected.append(reference_row(row, T))
            covered += row_items
            row, used = [], 0
        row_items = [k] if not row else row_items + [k]
        row.append(ex)
        used += len(ex[0])
    rows = _epoch_rows(packed, len(expected))  # the last, partial row may continue into the next epoch: left out
    for i, ((x, y), (ex_x, ex_y)) in enumerate(zip(rows, expected)):
        assert x.tolist() == ex_x and y.tolist() == ex_y, f"packed row {i}"
    assert [k for x, _ in rows for k in item_of(x, tok)] == covered and len(rows) < len(covered)
    trained_padded = sorted(t for x, y in padded_rows if item_of(x, tok)[0] in covered for t in y.tolist() if t != IGNORE_INDEX)
    trained_packed = sorted(t for _, y in rows for t in y.tolist() if t != IGNORE_INDEX)
    assert trained_packed == trained_padded


def test_truncation_warns_counts_and_drops(tmp_path, tok):
    long_prompt = " ".join(["word"] * 80)
    recs = records(6) + [{"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "x"}]},
                         {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": long_prompt}]}]
    with pytest.warns(SFTTruncationWarning, match=r"2 of 8 chat examples .* truncated; 1 of them kept no"):
        data = _data(write(tmp_path / "c.jsonl", recs), tok, packing=False, val_fraction=0.0)
    assert (data.stats.examples, data.stats.truncated, data.stats.dropped) == (8, 2, 1)
    x, y = data.next_batch(7)
    assert x.shape == (7, T) and ((y != IGNORE_INDEX).sum(1) > 0).all(), "every row has something to train"


BAD = [
    ('{"messages": [', "malformed JSON"),
    ('{"text": "hi"}', "missing 'messages'"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}', "'content' must be a string"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('[1, 2]', "expected a JSON object"),
]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("line,what", BAD, ids=[w for _, w in BAD])
def test_errors_name_file_and_line(tmp_path, tok, line, what, streaming):
    good = [json.dumps(r) for r in records(3)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good[0], good[1], "", line, good[2]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:4: ") + ".*" + re.escape(what)):
        _data(path, tok, streaming=streaming)


def test_config_errors(tmp_path, tok):
    path = write(tmp_path / "c.jsonl", records(4))
    with pytest.raises(DataError, match="unknown data key.*'text_field'"):
        _data(path, tok, text_field="text")
    with pytest.raises(DataError, match="set data.type: chat"):
        build_sft_data({"type": "local", "path": path}, tok, T)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: empty file"):
        _data(tmp_path / "empty.jsonl", tok)


@pytest.mark.parametrize("packing", [True, False])
def test_resume_sees_no_example_twice(tmp_path, tok, packing):
    path = write(tmp_path / "c.jsonl", records(40))
    first = _data(path, tok, packing=packing, seed=3)
    a = [first.next_batch(3) for _ in range(2)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a round trip through a checkpoint
    resumed = _data(path, tok, packing=packing, seed=3)
    resumed.load_state_dict(state)
    b = [resumed.next_batch(3) for _ in range(8)]
    straight = _data(path, tok, packing=packing, seed=3)
    c = [straight.next_batch(3) for _ in range(10)]
    for (x1, y1), (x2, y2) in zip(a + b, c):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    n_train = len(first.source.examples)
    items = [k for x, _ in a + b for row in x for k in item_of(row, tok)]
    first_epoch = items[:n_train - 1]  # a packed row may straddle the epoch's end
    assert len(set(first_epoch)) == len(first_epoch), "an example came back before the epoch ended"
    with pytest.raises(DataError, match="seed is 3 in the checkpoint but 4"):
        _data(path, tok, packing=packing, seed=4).load_state_dict(state)


def test_ranks_share_the_examples_without_overlap(tmp_path, tok):
    path = write(tmp_path / "c.jsonl", records(41))
    ranks = [_data(path, tok, packing=False, rank=r, world_size=2, seed=1) for r in range(2)]
    per_rank = len(ranks[0].source.examples) // 2
    seen = [[item_of(x, tok)[0] for x in r.next_batch(per_rank)[0]] for r in ranks]
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0] + seen[1])) == 2 * per_rank
    val = [item_of(x, tok) for r in ranks for xs, _ in r.val_batches(10, 4) for x in xs]
    assert val[: len(val) // 2] == val[len(val) // 2 :], "every rank evaluates on the same held-out examples"
    assert not {k for v in val for k in v} & set(seen[0] + seen[1]), "held-out examples are never trained on"


def test_val_path_and_val_batches(tmp_path, tok):
    train, val = write(tmp_path / "t.jsonl", records(10)), write(tmp_path / "v.jsonl", records(5, seed=9))
    data = _data(train, tok, val_path=val, packing=False)
    assert len(data.source.examples) == 10 and len(data.val_examples) == 5
    batches = list(data.val_batches(10, 2))
    assert [len(x) for x, _ in batches] == [2, 2, 1] and len(list(data.val_batches(1, 2))) == 1


@pytest.mark.parametrize("packing", [True, False])
def test_streaming_reads_in_order_and_resumes(tmp_path, tok, packing):
    recs = records(20)
    path = write(tmp_path / "c.jsonl", recs)
    cfg = dict(streaming=True, packing=packing, shuffle_buffer=0, val_examples=3)
    data = _data(path, tok, **cfg)
    assert sorted(k for ex in data.val_examples for k in item_of(torch.tensor(ex[0]), tok)) == [0, 1, 2]
    local_like = [reference_mask(recs[k]["messages"], tok) for k in range(3, 20)]
    x, y = data.next_batch(2)
    if not packing:  # stream order, after the held-out records
        assert [x.tolist(), y.tolist()] == [[reference_row([e], T)[i] for e in local_like[:2]] for i in (0, 1)]
    state = data.state_dict()
    resumed = _data(path, tok, **cfg)
    resumed.load_state_dict(state)
    xr, yr = resumed.next_batch(3)
    xs, ys = data.next_batch(3)
    assert torch.equal(xr, xs) and torch.equal(yr, ys)
    # shuffled streams: the same seed, the same order; epochs differ
    shuffled = [_data(path, tok, streaming=True, packing=False, shuffle_buffer=5, seed=2, val_examples=3) for _ in range(2)]
    one, two = (d.next_batch(17)[0] for d in shuffled)
    assert torch.equal(one, two)
    order = [item_of(r, tok)[0] for r in one]
    assert sorted(order) == list(range(3, 20)) and order != sorted(order)

"""Preference data: records checked with file:line errors, the prompt rendered with the chat
template + generation prompt, labels only on reply tokens (and <|im_end|>), chosen rows then
rejected rows, truncation from the prompt's left, shuffling, sharding and resume."""

from __future__ import annotations

import json

import pytest
import torch

from llm_course.data.dpo import build_dpo_data, fit_pair
from llm_course.data.pretrain import DataError
from llm_course.tokenizer import load_tokenizer

TOK = load_tokenizer()


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def pairs(n):
    return [{"prompt": f"Reverse: {i} {i + 1}", "chosen": f"{i + 1} {i}", "rejected": f"{i} {i + 1}"} for i in range(n)]


@pytest.mark.parametrize("line,message", [
    ("{not json", "malformed JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"prompt": "hi", "chosen": "a"}', "missing 'rejected'"),
    ('{"prompt": 3, "chosen": "a", "rejected": "b"}', "'prompt' must be a string or a non-empty list"),
    ('{"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}', "prompt message 0"),
    ('{"prompt": "hi", "chosen": ["a"], "rejected": "b"}', "'chosen' must be a string"),
    ('{"prompt": "hi", "chosen": "same", "rejected": "same"}', "the same reply"),
])  # fmt: skip
def test_bad_records_name_file_and_line(tmp_path, line, message):
    f = write(tmp_path / "prefs.jsonl", [*pairs(2), "", line])
    with pytest.raises(DataError, match=rf"prefs\.jsonl:4: .*{message}"):
        build_dpo_data({"type": "local", "path": str(f)}, TOK, 64)


def test_config_errors(tmp_path):
    with pytest.raises(DataError, match=r"unknown data key\(s\) \['text_field'\]"):
        build_dpo_data({"type": "local", "path": "x", "text_field": "t"}, TOK, 64)
    with pytest.raises(DataError, match="data.path is missing"):
        build_dpo_data({"type": "local"}, TOK, 64)
    with pytest.raises(DataError, match="empty file"):
        build_dpo_data({"type": "local", "path": str(write(tmp_path / "e.jsonl", [""]))}, TOK, 64)


def test_rows_and_labels(tmp_path):
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: 3 1 2"}]
    records = [{"prompt": "Reverse: 1 2 3", "chosen": "3 2 1", "rejected": "1 2 3 4 5"},
               {"prompt": system, "chosen": "1 2 3", "rejected": "<|im_end|> no"}, *pairs(3)]  # fmt: skip
    data = build_dpo_data({"type": "local", "path": str(write(tmp_path / "q.jsonl", records)), "val_fraction": 0.2},
                          TOK, 64)  # fmt: skip
    x, y = next(data.val_batches(1, 1))
    assert x.shape == y.shape and x.shape[0] == 2  # one held-out pair: its chosen row, its rejected row
    x = data.source.pairs
    for rec in records[:2]:
        prompt = TOK.apply_chat_template(rec["prompt"] if isinstance(rec["prompt"], list) else
                                         [{"role": "user", "content": rec["prompt"]}], add_generation_prompt=True,
                                         tokenize=True)  # fmt: skip
        for which in ("chosen", "rejected"):
            reply = TOK.encode(rec[which], special_tokens=False) + [TOK.im_end_id]
            assert (prompt, reply) in [(p, c) for p, c, _ in x] + [(p, r) for p, _, r in x]
    ids, labels = data.next_batch(2)  # 2 pairs -> 4 rows: chosen, chosen, rejected, rejected
    assert ids.shape == labels.shape and ids.shape[0] == 4 and ids.dtype == labels.dtype == torch.long
    pairs_in_order = [data.source.pairs[int(i)] for i in data.source.shard(0)[:2]]
    rows = [(p, c) for p, c, _ in pairs_in_order] + [(p, r) for p, _, r in pairs_in_order]
    assert max(len(p) + len(reply) for p, reply in rows) == ids.shape[1] + 1  # padded to the longest row
    for b, (p, reply) in enumerate(rows):
        n, T = len(p) + len(reply), ids.shape[1]
        assert ids[b, : min(n, T)].tolist() == (p + reply)[:T]
        assert (ids[b, n:] == TOK.pad_token_id).all()  # padding with <|endoftext|>
        counted = labels[b] != -100
        assert labels[b][counted].tolist() == reply  # exactly the reply and its <|im_end|>
        assert counted.nonzero()[0].item() == len(p) - 1  # position of the last prompt token predicts reply[0]


def test_truncation_cuts_the_prompt_from_the_left_first():
    prompt, chosen, rejected = list(range(100, 140)), [1, 2, 3, 4], [5, 6]
    p, c, r, cut = fit_pair(prompt, chosen, rejected, block_size=19)  # rows of 20 tokens
    assert cut and p == prompt[-16:] and c == chosen and r == rejected
    p, c, r, cut = fit_pair(prompt, list(range(30)), rejected, block_size=19)  # the reply alone is too long
    assert p == prompt[-10:] and c == list(range(10)) and r == rejected  # half a row kept for the prompt
    assert fit_pair([1, 2], [3], [4], 8) == ([1, 2], [3], [4], False)


def test_shuffle_shards_and_resume(tmp_path):
    f = write(tmp_path / "p.jsonl", pairs(21))
    cfg = {"type": "local", "path": str(f), "val_fraction": 0.05}
    ranks = [build_dpo_data(cfg, TOK, 64, rank=r, world_size=2, seed=3) for r in range(2)]
    seen = [set(), set()]
    for r, d in enumerate(ranks):
        for _ in range(5):  # one epoch of 10 pairs per rank, 2 at a time
            x, _ = d.next_batch(2)
            seen[r] |= {tuple(row.tolist()) for row in x[:2]}
    assert len(seen[0]) == len(seen[1]) == 10 and not seen[0] & seen[1]
    a = build_dpo_data(cfg, TOK, 64, seed=3)
    a.next_batch(3)
    state = a.state_dict()
    expected = a.next_batch(4)
    b = build_dpo_data(cfg, TOK, 64, seed=3)
    b.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(b.next_batch(4), expected))
    with pytest.raises(DataError, match="seed is 3 in the checkpoint but 4 now"):
        build_dpo_data(cfg, TOK, 64, seed=4).load_state_dict(state)


def test_val_path_and_streaming(tmp_path):
    train, val = write(tmp_path / "t.jsonl", pairs(6)), write(tmp_path / "v.jsonl", pairs(9)[6:])
    d = build_dpo_data({"type": "local", "path": str(train), "val_path": str(val)}, TOK, 64)
    assert len(d.source.pairs) == 6 and len(d.val_pairs) == 3
    s = build_dpo_data({"type": "streaming", "provider": "local", "path": str(train), "val_examples": 2}, TOK, 64)
    assert len(s.val_pairs) == 2
    first = s.next_batch(3)
    state = s.state_dict()
    nxt = s.next_batch(2)  # wraps into the second epoch of the 4 training pairs
    s2 = build_dpo_data({"type": "streaming", "provider": "local", "path": str(train), "val_examples": 2}, TOK, 64)
    s2.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(s2.next_batch(2), nxt))
    assert first[0].shape[0] == 6

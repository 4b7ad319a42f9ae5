"""Pretraining data: reading, tokenizing, packing, shuffling, sharding, resuming, held-out data, errors.

The reference for every check is the plain Python path: ``tokenizer.encode`` of each document,
``<eos>`` after each, concatenated.
"""

import json
import random

import numpy as np
import pytest
import torch

from llm_course.data.pretrain import DataError, build_pretrain_data
from llm_course.tokenizer import load_tokenizer

T = 16  # block_size


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def docs():
    rng = random.Random(0)
    words = "the model reads tokens and predicts the next one def return import class self data".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) for _ in range(40)]


@pytest.fixture()
def jsonl(tmp_path, docs):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def reference_tokens(tok, docs):
    out = []
    for d in docs:
        out += tok.encode(d) + [tok.eos_token_id]
    return np.array(out)


def build(path, tok, tmp_path, **kw):
    opts = {k: kw.pop(k) for k in list(kw) if k in ("rank", "world_size", "seed")}
    cfg = {"type": "local", "path": str(path), "cache_dir": str(tmp_path / "cache"), **kw}
    return build_pretrain_data(cfg, tok, T, **opts)


def blocks_of(x, y):  # (B, T), (B, T) -> rows of T+1 tokens
    assert torch.equal(x[:, 1:], y[:, :-1]), "labels must be input_ids shifted by one"
    return [tuple(r) for r in torch.cat([x, y[:, -1:]], dim=1).tolist()]


def test_blocks_are_the_packed_token_stream(jsonl, tok, docs, tmp_path):
    data = build(jsonl, tok, tmp_path, val_fraction=0.1)
    ref = reference_tokens(tok, docs)
    n = (len(ref) - 1) // T
    expected = {tuple(ref[i * T : i * T + T + 1].tolist()) for i in range(n)}
    assert data.num_train_blocks + data.num_val_blocks == n and data.num_val_blocks == round(n * 0.1)
    x, y = data.next_batch(data.num_train_blocks)  # exactly one epoch
    assert x.shape == (data.num_train_blocks, T) and x.dtype == torch.long
    train = blocks_of(x, y)
    assert len(set(train)) == len(train)  # no block twice in an epoch
    val = [b for xb, yb in data.val_batches(100, 3) for b in blocks_of(xb, yb)]
    assert len(val) == data.num_val_blocks
    assert set(train) | set(val) == expected and not set(train) & set(val)  # held out: never trained on
    tail = ref[data.num_train_blocks * T :]
    assert list(val[0]) == tail[: T + 1].tolist()  # the last blocks of the stream are the held-out ones
    assert data.state_dict()["epoch"] == 1 and data.state_dict()["cursor"] == 0


def test_eos_between_documents(jsonl, tok, docs, tmp_path):
    data = build(jsonl, tok, tmp_path, val_fraction=0.0)
    assert np.asarray(data.tokens).tolist() == reference_tokens(tok, docs).tolist()
    assert int((np.asarray(data.tokens) == tok.eos_token_id).sum()) == len(docs)


def test_shuffle_is_deterministic_by_seed(jsonl, tok, tmp_path):
    a, b, c = (build(jsonl, tok, tmp_path, seed=s) for s in (1, 1, 2))
    xa, xb, xc = a.next_batch(8)[0], b.next_batch(8)[0], c.next_batch(8)[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert not torch.equal(a.next_batch(8)[0], xa)  # it moves on


def test_ranks_read_disjoint_shards(jsonl, tok, tmp_path):
    ranks = [build(jsonl, tok, tmp_path, rank=r, world_size=2, seed=3) for r in range(2)]
    per_rank = ranks[0].blocks_per_rank
    assert ranks[1].blocks_per_rank == per_rank == ranks[0].num_train_blocks // 2
    seen = [set(blocks_of(*d.next_batch(per_rank))) for d in ranks]
    assert len(seen[0]) == len(seen[1]) == per_rank and not seen[0] & seen[1]
    one = build(jsonl, tok, tmp_path, seed=3)
    assert seen[0] | seen[1] <= set(blocks_of(*one.next_batch(one.num_train_blocks)))


def test_resume_continues_and_sees_no_block_twice(jsonl, tok, tmp_path):
    full = build(jsonl, tok, tmp_path, seed=5)
    n = full.num_train_blocks
    batches = [full.next_batch(7) for _ in range(n // 7 + 3)]  # crosses an epoch boundary
    first = build(jsonl, tok, tmp_path, seed=5)
    for i in range(4):
        assert torch.equal(first.next_batch(7)[0], batches[i][0])
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint stores plain data
    resumed = build(jsonl, tok, tmp_path, seed=5)
    resumed.load_state_dict([state])  # the list of every rank's state also works
    rest = [resumed.next_batch(7) for _ in range(len(batches) - 4)]
    for got, want in zip(rest, batches[4:]):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    epoch0 = [b for x, y in batches for b in blocks_of(x, y)][:n]
    assert len(set(epoch0)) == n
    with pytest.raises(DataError, match="seed"):
        build(jsonl, tok, tmp_path, seed=6).load_state_dict(state)


def test_token_cache_is_reused(jsonl, tok, tmp_path):
    first = build(jsonl, tok, tmp_path)
    cached = list((tmp_path / "cache").glob("tokens-*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).dtype == np.uint16

    class NoEncode:  # the same tokenizer, but tokenizing again would fail
        eos_token_id, tokenizer = tok.eos_token_id, tok.tokenizer

        def __len__(self):
            return len(tok)

        def encode_batch(self, texts):
            raise AssertionError("the cache was not used")

    again = build(jsonl, NoEncode(), tmp_path)
    assert np.array_equal(np.asarray(again.tokens), np.asarray(first.tokens))


def test_txt_and_parquet_read_the_same_documents(tmp_path, tok, docs):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(docs[:5]):
        (folder / f"{i:02d}.txt").write_text(d, encoding="utf-8")
    pq.write_table(pa.table({"body": docs[:5]}), tmp_path / "docs.parquet")
    ref = reference_tokens(tok, docs[:5]).tolist()
    txt = build(folder, tok, tmp_path, format="txt", val_fraction=0.0)
    par = build(tmp_path / "docs.parquet", tok, tmp_path, text_field="body", val_fraction=0.0)
    assert np.asarray(txt.tokens).tolist() == ref and np.asarray(par.tokens).tolist() == ref


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n', r"bad\.jsonl:3: malformed JSON"),
        ('{"text": "a"}\n{"body": "b"}\n', r"bad\.jsonl:2: missing text field 'text'"),
        ('{"text": "a"}\n\n{"text": 5}\n', r"bad\.jsonl:3: field 'text' is int"),
        ("", r"bad\.jsonl: empty file"),
        ("\n  \n", r"bad\.jsonl: empty file"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, tok, content, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        build(bad, tok, tmp_path)


def test_config_errors(jsonl, tok, tmp_path):
    with pytest.raises(DataError, match="unknown data key.*'pth'"):
        build_pretrain_data({"type": "local", "pth": "x"}, tok, T)
    with pytest.raises(DataError, match="no such file"):
        build(tmp_path / "nope.jsonl", tok, tmp_path)
    with pytest.raises(DataError, match="data.type 'remote'"):
        build_pretrain_data({"type": "remote", "path": str(jsonl)}, tok, T)
    with pytest.raises(DataError, match="too few"):
        build_pretrain_data({"path": str(jsonl), "cache_dir": str(tmp_path / "c")}, tok, 100_000)


# ---------------------------------------------------------------- streaming (local files, streaming=True)
def stream(jsonl, tok, **kw):
    opts = {k: kw.pop(k) for k in list(kw) if k in ("rank", "world_size", "seed")}
    cfg = {"type": "streaming", "provider": "local", "path": str(jsonl), "val_documents": 2, **kw}
    return build_pretrain_data(cfg, tok, T, **opts)


def test_streaming_packs_the_stream_in_order(jsonl, tok, docs):
    data = stream(jsonl, tok, shuffle_buffer=0)
    ref = reference_tokens(tok, docs[2:])
    x, y = data.next_batch(5)
    assert [list(b) for b in blocks_of(x, y)] == [ref[i * T : i * T + T + 1].tolist() for i in range(5)]
    val_ref = reference_tokens(tok, docs[:2])
    (vx, vy), *_ = data.val_batches(1, 2)
    assert blocks_of(vx, vy)[0] == tuple(val_ref[: T + 1].tolist())


def test_streaming_resume_and_ranks(jsonl, tok, docs):
    full = stream(jsonl, tok, seed=4, shuffle_buffer=8, tokenize_batch_size=3)
    want = [full.next_batch(4) for _ in range(40)]
    part = stream(jsonl, tok, seed=4, shuffle_buffer=8, tokenize_batch_size=3)
    for i in range(5):
        assert torch.equal(part.next_batch(4)[0], want[i][0])
    resumed = stream(jsonl, tok, seed=4, shuffle_buffer=8, tokenize_batch_size=3)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert full.epoch >= 1  # crossed an epoch boundary
    for i in range(5, 40):
        assert torch.equal(resumed.next_batch(4)[0], want[i][0])
    for r in range(2):  # rank r reads documents r, r+2, ... of the training stream
        data = stream(jsonl, tok, rank=r, world_size=2, shuffle_buffer=0)
        ref = reference_tokens(tok, docs[2 + r :: 2])
        assert blocks_of(*data.next_batch(1))[0] == tuple(ref[: T + 1].tolist())

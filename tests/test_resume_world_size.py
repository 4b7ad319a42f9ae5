"""Resuming a run with a different number of processes (DDP or FSDP, 1 <-> 2 processes).

A checkpoint holds the full model and optimizer state, so only the per-rank parts change:
the data position is re-sharded (a global count of blocks read, then split again), the RNGs
are re-seeded deterministically, the unigram counts are merged. With the same global batch
the resumed run reads the same examples per step as the uninterrupted one, and without
dropout its losses continue the uninterrupted run's (rel. 1e-5: float summation order only).
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm_course.data.pretrain import PackedData
from llm_course.data.streaming import StreamingData
from llm_course.training import checkpoint as ckpt
from llm_course.training.distributed import DistInfo
from llm_course.training.trainer import restore_rank_state, train
from tests.trainer_helpers import SyntheticData, tiny_config, tiny_model

T = 4


def quiet(*args, **kwargs):
    pass


# ---------------------------------------------------------------- packed data: the position re-sharded
def packed(rank=0, world_size=1, n_blocks=40):
    tokens = np.arange(n_blocks * T + 1, dtype=np.int64)  # block i starts with token i*T: easy to name
    return PackedData(tokens, T, val_fraction=0.0, rank=rank, world_size=world_size, seed=3)


def block_ids(data, batch_size):
    x, _ = data.next_batch(batch_size)
    return (x[:, 0] // T).tolist()


@pytest.mark.parametrize("old, new, batches", [(2, 1, 3), (1, 2, 5), (2, 3, 3), (1, 3, 7), (3, 2, 1)])
def test_packed_position_is_resharded_without_repeats(old, new, batches):
    perm = np.random.default_rng([3, 0]).permutation(40).tolist()  # epoch 0's order (PackedData's seed)
    olds = [packed(r, old) for r in range(old)]
    read = [b for d in olds for _ in range(batches) for b in block_ids(d, 2)]
    assert sorted(read) == sorted(perm[: 2 * batches * old])  # every old rank read the start of the permutation
    states = json.loads(json.dumps([d.state_dict() for d in olds]))
    news = [packed(r, new) for r in range(new)]
    for d in news:
        d.load_state_dict(states)
    done = 2 * batches * old
    skipped = -(-done // new) * new - done  # the blocks skipped to keep the ranks in step
    assert skipped == (0 if done % new == 0 else new - done % new)
    nxt = [block_ids(d, 1)[0] for d in news]  # one block per new rank
    assert sorted(nxt) == sorted(perm[done + skipped : done + skipped + new])
    assert not set(nxt) & set(read)


def test_packed_resharded_past_the_epoch_end_starts_the_next_epoch():
    one = packed(0, 1, n_blocks=9)
    one.next_batch(8)  # 8 of 9 blocks read; 2 ranks' epochs hold 8 blocks (4 each)
    two = packed(1, 2, n_blocks=9)
    two.load_state_dict([one.state_dict()])
    assert (two.epoch, two.cursor) == (1, 0)


def test_packed_state_of_other_data_is_refused():
    from llm_course.data.pretrain import DataError

    state = packed(0, 2).state_dict()
    with pytest.raises(DataError, match="num_train_blocks"):
        packed(0, 1, n_blocks=30).load_state_dict([state])


# ---------------------------------------------------------------- streaming data: positions re-sharded
class CharTokenizer:
    """One token per character (its code point), eos = 0: enough to follow the documents."""

    eos_token_id = 0

    def encode_batch(self, texts):
        return [[ord(c) for c in t] for t in texts]


def docs_file(tmp_path, n=30):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": chr(0x100 + i) * (1 + i % 3)}) + "\n" for i in range(n)))
    return path


def streaming(path, rank, world_size):
    cfg = {"type": "streaming", "provider": "local", "path": str(path), "val_documents": 0, "shuffle_buffer": 0,
           "tokenize_batch_size": 1}  # fmt: skip
    return StreamingData(cfg, CharTokenizer(), T, rank=rank, world_size=world_size)


def read_docs(data, n_batches):
    ids = set()
    for _ in range(n_batches):
        x, y = data.next_batch(1)
        ids |= {t - 0x100 for t in torch.cat([x[0], y[0, -1:]]).tolist() if t}
    return ids


@pytest.mark.parametrize("old, new", [(2, 1), (2, 3)])
def test_streaming_positions_are_resharded_without_repeats(tmp_path, old, new):
    path = docs_file(tmp_path)
    olds = [streaming(path, r, old) for r in range(old)]
    seen = set().union(*(read_docs(d, 2 + r) for r, d in enumerate(olds)))  # the ranks are not in step
    states = json.loads(json.dumps([d.state_dict() for d in olds]))
    leftover = [t for st in states for t in st["buffer"] if t]
    news = [streaming(path, r, new) for r in range(new)]
    for d in news:
        d.load_state_dict(states)
    assert sorted(t for d in news for t in d.buffer if t) == sorted(leftover)  # unused tokens handed on
    start = news[0].start
    assert start == max(seen) + 1  # right after the last document any old rank read
    for r, d in enumerate(news):
        mine = [ord(text[0]) - 0x100 for text in d._documents(d.epoch, 0)]
        assert mine == list(range(start + r, 30, new))
    assert news[0].state_dict()["start"] == start


# ---------------------------------------------------------------- the trainer's per-rank state
def test_restore_rank_state_merges_counts_and_reseeds(tmp_path):
    counts = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])]
    state = {"step": 5, "rng": [ckpt.rng_state(), ckpt.rng_state()], "data": None, "extra": {"train_counts": counts}}
    got = [restore_rank_state(state, None, DistInfo(rank=r, world_size=3), seed=0, source="ck") for r in range(3)]
    assert torch.equal(got[0][1], torch.tensor([4.0, 2.0])) and not got[1][1].any() and not got[2][1].any()
    draws = []
    for rng, _ in got:
        ckpt.set_rng_state(rng)
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1])  # a different stream per rank ...
    ckpt.set_rng_state(restore_rank_state(state, None, DistInfo(rank=1, world_size=3), 0, "ck")[0])
    assert torch.equal(torch.rand(3), draws[1])  # ... and the same again on the same resume
    same = restore_rank_state(state, None, DistInfo(rank=1, world_size=2), 0, "ck")
    assert same[0] is state["rng"][1] and torch.equal(same[1], counts[1])  # same world size: as saved
    with pytest.raises(ValueError, match="cannot re-shard.*resume with 2"):
        restore_rank_state({**state, "data": [{}, {}]}, SyntheticData(), DistInfo(rank=0, world_size=1), 0, "ck")


# ---------------------------------------------------------------- a run resumed with 1 <-> 2 processes
class ReshardableData(SyntheticData):
    """SyntheticData whose position (a row cursor per rank, rows interleaved over ranks) re-shards."""

    can_reshard = True

    def state_dict(self):
        return {"cursor": self.cursor, "world_size": self.world_size}

    def load_state_dict(self, state):
        if isinstance(state, list):  # every saved rank's state: all at the same cursor
            rows = state[0]["cursor"] * state[0]["world_size"]  # rows read by all ranks together
            state = {"cursor": -(-rows // self.world_size)}
        self.cursor = state["cursor"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(out_dir, processes, steps, parallelism="ddp"):
    return tiny_config(out_dir, max_steps=steps, batch_size=4 // processes, grad_accum_steps=2,
                       parallelism=parallelism, save_every=2)  # fmt: skip


def two_process_worker(rank: int, world_size: int, port: int, root: str, result_file: str) -> None:
    """Rank ``rank`` of: (a) an FSDP run of 2 steps from scratch in root/a, then (b) a DDP run that
    resumes root/b (written by one process) to step 4."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from llm_course.training import distributed as D

    info = D.init_distributed("cpu")
    try:
        data = lambda: ReshardableData(rank=rank, world_size=world_size)  # noqa: E731
        a = train(_cfg(f"{root}/a", 2, 2, "fsdp"), model=tiny_model(), data=data(), info=info, print_fn=quiet)
        b = train(_cfg(f"{root}/b", 2, 4), model=tiny_model(seed=9), data=data(), info=info, print_fn=quiet)
        if rank == 0:
            torch.save({"a": a.history, "b": b.history}, result_file)
    finally:
        D.cleanup(info)


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_checkpoints_resume_across_a_change_in_the_number_of_processes(tmp_path):
    full = train(_cfg(tmp_path / "full", 1, 4), model=tiny_model(), data=ReshardableData(), print_fn=quiet).history
    first = train(_cfg(tmp_path / "b", 1, 2), model=tiny_model(), data=ReshardableData(), print_fn=quiet).history
    result_file = tmp_path / "two.pt"
    mp.spawn(two_process_worker, args=(2, _free_port(), str(tmp_path), str(result_file)), nprocs=2, join=True)
    two = torch.load(result_file, weights_only=False)
    # 1 -> 2 processes (DDP): steps 3 and 4 continue the uninterrupted run (the model argument,
    # seed 9, is overwritten by the checkpoint: the resume really loaded it)
    assert [h["step"] for h in two["b"]] == [3, 4]
    for got, want in zip(first + two["b"], full):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    # 2 processes (FSDP) -> 1: the sharded run's checkpoint resumes unsharded
    assert len(ckpt.latest_checkpoint(tmp_path / "a" / "checkpoints").joinpath("trainer_state.pt").read_bytes()) > 0
    rest = train(_cfg(tmp_path / "a", 1, 4), model=tiny_model(seed=9), data=ReshardableData(), print_fn=quiet).history
    assert [h["step"] for h in rest] == [3, 4]
    for got, want in zip(two["a"] + rest, full):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)

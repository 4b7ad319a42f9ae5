"""SFT and DPO data resumed with a different number of processes (1 -> 2, 2 -> 1, 2 -> 3).

The old ranks read a few batches, their positions go through JSON (as in a checkpoint), new
ranks load the list of them and read on. The reference is the epoch's order computed here
(``default_rng([seed, epoch]).permutation`` for local data, the stream's order when
streaming), dealt out to the ranks as ``order[r::W]``: what all ranks read together must be
that order with no example twice and only a few skipped.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_course.data.dpo import DPOData, _LocalPairs, _StreamPairs
from llm_course.data.pretrain import DataError
from llm_course.data.sft import SFTData, Stats, _LocalSource, _StreamSource
from llm_course.training import checkpoint as ckpt
from llm_course.training.distributed import DistInfo
from llm_course.training.trainer import restore_rank_state

N, SEED, BLOCK, MARK = 60, 5, 8, 1000  # examples, seed, block_size, id of example k = MARK + k
WORLDS = [(1, 2), (2, 1), (2, 3)]


# ---------------------------------------------------------------- tiny data sets whose examples say who they are
def sft_example(k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[1, MARK+k, ..., 2]``: 3 to 5 tokens (so packed rows hold 1 to 3 examples), all but the first trained."""
    ids = np.array([1] + [MARK + k] * (1 + k % 3) + [2], dtype=np.int64)
    return ids, np.arange(len(ids)) > 0


def stream_order(epoch: int) -> list[int]:
    return np.random.default_rng([SEED, 100 + epoch]).permutation(N).tolist()


def local_order(epoch: int) -> list[int]:
    return np.random.default_rng([SEED, epoch]).permutation(N).tolist()  # the local sources' permutation


def make_sft(rank: int, world: int, *, streaming: bool, packing: bool) -> SFTData:
    examples = [sft_example(k) for k in range(N)]
    if streaming:
        records = lambda epoch: ((f"record {k}", k) for k in stream_order(epoch))  # noqa: E731
        source = _StreamSource(records, lambda k, where: examples[k], rank, world)
    else:
        source = _LocalSource(examples, rank, world, SEED)
    return SFTData(source, [], block_size=BLOCK, packing=packing, pad_id=0, rank=rank, world_size=world, seed=SEED,
                   stats=Stats(), kind="sft-streaming" if streaming else "sft")  # fmt: skip


def make_dpo(rank: int, world: int, *, streaming: bool) -> DPOData:
    pairs = [([MARK + k], [5, 6], [7]) for k in range(N)]
    if streaming:
        records = lambda epoch: ((f"record {k}", k) for k in stream_order(epoch))  # noqa: E731
        source = _StreamPairs(records, lambda k: (*pairs[k], False), rank=rank, world_size=world, seed=SEED)
    else:
        source = _LocalPairs(pairs, 0, rank=rank, world_size=world, seed=SEED, source="pairs")
    return DPOData(source, [], pad_id=0)


def read_sft(data: SFTData, rows: int = 2) -> list[int]:
    """The examples of ``rows`` rows (one batch), in order: the token after each start marker."""
    x, _ = data.next_batch(rows)
    return [int(row[t + 1]) - MARK for row in x.tolist() for t in range(len(row) - 1) if row[t] == 1]


def read_dpo(data: DPOData, pairs: int = 2) -> list[int]:
    x, _ = data.next_batch(pairs)  # (2 * pairs, T): chosen rows first, each starts with its prompt
    assert x[:pairs, 0].tolist() == x[pairs:, 0].tolist()  # a pair's two rows have the same prompt
    return [int(t) - MARK for t in x[:pairs, 0]]


CASES = {  # name: (make(rank, world), read(data), the epoch's order, ranks stay in step)
    "sft-local-padded": (lambda r, w: make_sft(r, w, streaming=False, packing=False), read_sft, local_order, True),
    "sft-local-packed": (lambda r, w: make_sft(r, w, streaming=False, packing=True), read_sft, local_order, False),
    "sft-stream-padded": (lambda r, w: make_sft(r, w, streaming=True, packing=False), read_sft, stream_order, True),
    "sft-stream-packed": (lambda r, w: make_sft(r, w, streaming=True, packing=True), read_sft, stream_order, False),
    "dpo-local": (lambda r, w: make_dpo(r, w, streaming=False), read_dpo, local_order, True),
    "dpo-stream": (lambda r, w: make_dpo(r, w, streaming=True), read_dpo, stream_order, True),
}


def saved(datas) -> list[dict]:
    """Every rank's position, through JSON as a checkpoint would store it."""
    return json.loads(json.dumps([d.state_dict() for d in datas]))


# ---------------------------------------------------------------- the position re-sharded
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("old, new", WORLDS)
def test_resharded_run_reads_the_epoch_without_repeats(case, old, new):
    make, read, order_of, in_step = CASES[case]
    order = order_of(0)
    olds = [make(r, old) for r in range(old)]
    before = [[k for _ in range(2) for k in read(d)] for d in olds]  # 2 batches per old rank
    for r, got in enumerate(before):  # the old ranks read their share of the epoch's order, from its start
        assert got == order[r::old][: len(got)]
    states = saved(olds)
    news = [make(r, new) for r in range(new)]
    assert all(d.can_reshard for d in news)
    for d in news:
        d.load_state_dict(states)
    after = [read(d) for d in news]  # 1 batch per new rank
    seen = [k for got in before + after for k in got]
    assert len(seen) == len(set(seen)), f"an example was read twice: {sorted(seen)}"

    end = 1 + max(order.index(k) for got in before for k in got)  # all the old ranks read lies before `end`
    start = -(-end // new) * new  # where the new ranks start in the epoch's order: the next multiple of `new`
    assert start - end < new  # fewer than `new` examples skipped to keep the new ranks in step
    for r, got in enumerate(after):
        assert got == order[start + r :: new][: len(got)]  # each new rank continues its new share
    if in_step:  # one example per row: together, the uninterrupted order minus the few skipped
        n_before, n_after = sum(map(len, before)), sum(map(len, after))
        assert end == n_before
        assert sorted(seen) == sorted(order[:n_before] + order[start : start + n_after])
    else:  # packed rows: the examples a slower old rank had not reached are skipped too
        skipped = set(order[:start]) - set(seen)
        assert len(skipped) == start - sum(map(len, before))


@pytest.mark.parametrize("case", ["sft-local-padded", "dpo-local"])
def test_resharded_past_the_epoch_end_starts_the_next_epoch(case):
    make, read, _, _ = CASES[case]
    one = make(0, 1)
    for _ in range(N - 2):  # all but 2 examples of epoch 0 read; 3 ranks read N / 3 each per epoch
        read(one, 1)
    states = saved([one])
    news = [make(r, 3) for r in range(3)]
    for d in news:
        d.load_state_dict(states)
    assert [d.state_dict()["epoch"] for d in news] == [1, 1, 1]
    assert [read(d) for d in news] == [local_order(1)[r::3][:2] for r in range(3)]  # the next epoch, dealt anew


@pytest.mark.parametrize("case", ["sft-stream-padded", "dpo-stream"])
def test_streams_resharded_past_their_end_start_the_next_epoch(case):
    make, read, _, _ = CASES[case]
    olds = [make(r, 2) for r in range(2)]
    for d in olds:
        for _ in range(N // 2 - 1):  # N - 2 records read: 3 new ranks continue at records N, N + 1, N + 2
            read(d, 1)
    news = [make(r, 3) for r in range(3)]
    for d in news:
        d.load_state_dict(saved(olds))
    assert [read(d, 1) for d in news] == [[stream_order(1)[r]] for r in range(3)]  # the next epoch, dealt anew
    assert [d.state_dict()["epoch"] for d in news] == [1, 1, 1]


def test_packed_ranks_in_different_epochs_continue_in_the_latest():
    # packed rows hold different numbers of examples, so one rank can start epoch 1 while the
    # other still finishes epoch 0: rank 0 has read 4 examples of epoch 1, rank 1 29 of its 30 of epoch 0
    states = saved([make_sft(r, 2, streaming=False, packing=True) for r in range(2)])
    states[0].update(epoch=1, cursor=4)
    states[1].update(epoch=0, cursor=N // 2 - 1)
    done = local_order(1)[0::2][:4]  # what rank 0 read of epoch 1: positions 0, 2, 4, 6
    news = [make_sft(r, 3, streaming=False, packing=True) for r in range(3)]
    for d in news:
        d.load_state_dict(states)
    firsts = [read_sft(d, 1)[0] for d in news]
    assert firsts == [local_order(1)[9 + r] for r in range(3)]  # epoch 1 after position 6, at a multiple of 3
    assert not set(firsts) & set(done)


# ---------------------------------------------------------------- through the trainer, and the errors
@pytest.mark.parametrize("case", ["sft-local-packed", "dpo-stream"])
def test_restore_rank_state_reshards_finetune_data(case):
    make, read, _, _ = CASES[case]
    olds = [make(r, 2) for r in range(2)]
    before = {k for d in olds for k in read(d)}
    state = {"step": 1, "rng": [ckpt.rng_state()] * 2, "data": saved(olds), "extra": {}}
    news = [make(r, 3) for r in range(3)]
    for r, d in enumerate(news):
        restore_rank_state(state, d, DistInfo(rank=r, world_size=3), seed=0, source="ck")
    direct = make(0, 3)
    direct.load_state_dict(state["data"])
    assert news[0].state_dict() == direct.state_dict()  # the trainer hands the list of every rank's state
    after = [k for d in news for k in read(d)]
    assert len(after) == len(set(after)) and not before & set(after)


class FixedWorldData:
    """A data object without ``can_reshard``: its position is only meaningful on as many ranks."""

    def state_dict(self):
        return {"cursor": 0}

    def load_state_dict(self, state):
        raise AssertionError("must not be called with another number of ranks")


def test_data_that_cannot_reshard_is_a_clear_error():
    state = {"step": 1, "rng": [ckpt.rng_state()] * 2, "data": [{"cursor": 0}] * 2, "extra": {}}
    with pytest.raises(ValueError, match=r"2 process\(es\).*\(FixedWorldData\) cannot re-shard.*resume with 2 process"):
        restore_rank_state(state, FixedWorldData(), DistInfo(rank=0, world_size=1), 0, "ck")


@pytest.mark.parametrize("case", ["sft-local-padded", "sft-stream-packed", "dpo-local", "dpo-stream"])
def test_positions_of_other_data_are_refused(case):
    make, read, _, _ = CASES[case]
    states = saved([make(r, 2) for r in range(2)])
    with pytest.raises(DataError, match="rank 1: seed is 6 in the checkpoint but 5 now"):
        make(0, 3).load_state_dict([states[0], {**states[1], "seed": 6}])
    with pytest.raises(DataError, match="entry 0 is rank 1 of 2, expected rank 0 of 2"):
        make(0, 3).load_state_dict(states[::-1])
    if "local" in case:
        key = "num_train_examples" if case.startswith("sft") else "num_pairs"
        with pytest.raises(DataError, match=f"{key} is 99 in the checkpoint but {N} now"):
            make(0, 1).load_state_dict([{**st, key: 99} for st in states])
    if case.startswith("sft"):
        with pytest.raises(DataError, match="packing is"):
            make(0, 1).load_state_dict([{**st, "packing": not st["packing"]} for st in states])

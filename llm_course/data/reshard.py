"""Re-sharding an example position when a run resumes with a different number of processes.

The fine-tuning data sets (:mod:`llm_course.data.sft`, :mod:`llm_course.data.dpo`) deal the
examples of an epoch out like cards: rank ``r`` of ``W`` reads the epoch's examples
``r, r + W, r + 2W, ...`` (of a seeded permutation for local files, of the shuffled stream
when streaming). A rank's position is ``(epoch, n)``: it has used its first ``n`` examples of
that epoch, i.e. the epoch's examples ``r + W*i`` for ``i < n``.

A checkpoint holds the list of every rank's position. Resumed with ``W'`` ranks, the position
is converted as :meth:`llm_course.data.pretrain.PackedData.load_state_dict` does for blocks:

1. Take the **latest epoch** any old rank reached (ranks still in an older epoch skip its rest).
2. Count the examples of that epoch read by all old ranks together, as the **end** ``g`` of
   what was read: ``g = max_r (r + W*(n_r - 1) + 1)`` over the ranks that read any. When the
   ranks moved in step (``n_r = n``: one example or pair per row), ``g = n * W``, the count.
3. Every new rank continues at ``n' = ceil(g / W')``: its next example is ``r' + W'*n' >= g``,
   so **no example is read twice**. The ``n' * W' - g < W'`` examples in between are skipped
   for this epoch (they come back, reshuffled, in the next one).

When the old ranks did *not* move in step (packed SFT rows hold as many examples as fit, so
one rank may have used more than another), the examples a slower rank had not reached yet
(below ``g``) are skipped too: at most the spread between the ranks' counts times ``W``.
"""

from __future__ import annotations

import numpy as np

from llm_course.data.pretrain import DataError, epoch_shard


def check_saved_ranks(states: list[dict], expect: dict) -> None:
    """Every saved rank's state has the values of ``expect`` (data kind, seed, ...) and entry ``r`` is
    rank ``r`` of ``len(states)``; else a :class:`DataError` naming the rank and the key."""
    if not states:
        raise DataError("data state: the checkpoint holds no rank's data position")
    for r, st in enumerate(states):
        for key, want in expect.items():
            if st.get(key) != want:
                raise DataError(f"data state of rank {r}: {key} is {st.get(key)!r} in the checkpoint but {want!r} "
                                "now; resuming needs the same data, block_size, packing and seed")  # fmt: skip
        if st.get("world_size") != len(states) or st.get("rank") != r:
            raise DataError(f"data state: entry {r} is rank {st.get('rank')!r} of {st.get('world_size')!r}, "
                            f"expected rank {r} of {len(states)}")  # fmt: skip


def read_end(states: list[dict], count_key: str) -> tuple[int, int]:
    """``(epoch, g)``: the latest epoch any saved rank reached, and the end of what the ranks read of
    it together (every example of that epoch they used has an index below ``g``)."""
    old_world = len(states)
    epoch = max(int(st["epoch"]) for st in states)
    ends = [r + old_world * (int(st[count_key]) - 1) + 1
            for r, st in enumerate(states) if int(st["epoch"]) == epoch and int(st[count_key]) > 0]  # fmt: skip
    return epoch, max(ends, default=0)


def reshard_position(states: list[dict], world_size: int, count_key: str) -> tuple[int, int]:
    """``(epoch, n')``: where each of ``world_size`` new ranks continues, from every old rank's state
    (``count_key``: the name of the per-rank count, e.g. ``"cursor"``). See the module docstring."""
    epoch, end = read_end(states, count_key)
    return epoch, -(-end // world_size)  # ceil: skip fewer than world_size rather than repeat


class ShuffledShard:
    """A rank's share of ``n_items`` examples held in memory, epoch after epoch.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``, trimmed to a multiple of ``world_size``
    (so every rank gets ``per_rank`` examples and the ranks stay in step); rank ``r`` reads its
    items ``r, r + W, ...``. The position is ``(epoch, cursor)``: ``cursor`` examples of this
    epoch used. The SFT and DPO data sets of local files hold one each.
    """

    def __init__(self, n_items: int, rank: int, world_size: int, seed: int):
        self.n_items, self.rank, self.world_size, self.seed = n_items, rank, world_size, int(seed)
        self.per_rank = n_items // world_size
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._shard = -1, np.empty(0, dtype=np.int64)

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's item indices of ``epoch``, in reading order."""
        if epoch != self._perm_epoch:
            self._shard = epoch_shard(self.n_items, self.rank, self.world_size, self.seed, epoch)
            self._perm_epoch = epoch
        return self._shard

    def current(self) -> int:
        """The index of the next item to read."""
        return int(self.shard(self.epoch)[self.cursor])

    def advance(self) -> None:
        self.cursor += 1
        if self.cursor >= self.per_rank:
            self.epoch, self.cursor = self.epoch + 1, 0

    def reshard(self, states: list[dict], expect: dict) -> None:
        """Continue from the saved positions of another number of ranks (see the module docstring)."""
        check_saved_ranks(states, expect)
        self.epoch, self.cursor = reshard_position(states, self.world_size, "cursor")
        if self.cursor >= self.per_rank:  # past the end of the (now differently trimmed) epoch
            self.epoch, self.cursor = self.epoch + 1, 0

"""Streaming pretraining data: read, tokenize and pack documents as they arrive.

A data set too big for the disk (or for a tokenization pass before training) is read with
``datasets.load_dataset(..., streaming=True)``: an iterable that fetches documents as the loop asks
for them. Nothing is cached; tokens are packed into blocks on the fly::

    data:
      type: streaming
      provider: huggingface        # or local: files read lazily (path, format as for type: local)
      path: HuggingFaceFW/fineweb-edu
      subset: sample-10BT
      split: train
      text_field: text
      shuffle_buffer: 1000         # documents in the shuffle buffer (0: stream order)
      val_documents: 50            # the first documents of the stream are held out ...
      # val_split: validation      # ... or a split of its own

The held-out documents are taken **before** shuffling, so they never reach training in any epoch.
Rank ``r`` of ``world_size`` keeps the documents whose index in the (shuffled) stream is ``r`` mod
``world_size``. The position is ``(epoch, documents read, leftover tokens)``; a resumed run re-opens
the stream, skips the documents it already read (without tokenizing them) and continues, so it
sees no document twice. Ranks read different documents, so each rank has its own position:
save the list of every rank's ``state_dict()``; ``load_state_dict`` takes that list.

Resuming with a different number of ranks (see :meth:`StreamingData.load_state_dict`): the new
ranks start right after the last document any old rank read (documents the slower old ranks
had not reached yet are skipped in this epoch, none is read twice), and the tokens the old
ranks had read but not used yet are handed on (old rank r's to new rank ``r mod W'``).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np
import torch

from llm_course.data.pretrain import (
    FORMATS, DataError, encode_batch, eos_id, find_jsonl_problem, infer_reader, resolve_files,
)  # fmt: skip

STREAMING_KEYS = {"type", "provider", "path", "subset", "split", "format", "text_field", "shuffle_buffer",
                  "val_documents", "val_split", "tokenize_batch_size"}  # fmt: skip


def open_stream(cfg: dict, split: str):
    """The ``datasets.IterableDataset`` that ``cfg`` names (a hub data set, or local files)."""
    import datasets

    provider, text_field = cfg.get("provider", "huggingface"), cfg.get("text_field", "text")
    if provider == "local":
        fmt = cfg.get("format")
        files = resolve_files(cfg["path"], FORMATS.get(fmt, "json") if fmt else "json")
        reader = infer_reader(files, fmt)
        for f in files:  # errors naming file and line before training starts
            if f.stat().st_size == 0 or (reader != "parquet" and not f.read_text("utf-8", "replace").strip()):
                raise DataError(f"{f}: empty file (no documents)")
            if reader == "json" and (problem := find_jsonl_problem(f, text_field)):
                raise DataError(problem)
        kwargs = {"sample_by": "document"} if reader == "text" else {}
        return datasets.load_dataset(reader, data_files=[str(f) for f in files], split="train", streaming=True,
                                     **kwargs)  # fmt: skip
    if provider != "huggingface":
        raise DataError(f"data.provider {provider!r} is not 'huggingface' or 'local'")
    return datasets.load_dataset(cfg["path"], cfg.get("subset"), split=split, streaming=True)


class StreamingData:
    """``next_batch`` / ``val_batches`` / ``state_dict`` over a document stream (see the module doc)."""

    can_reshard = True  # load_state_dict accepts the positions saved by another number of ranks

    def __init__(self, cfg: dict, tokenizer, block_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0):
        if not (0 <= rank < world_size):
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.cfg, self.tokenizer, self.block_size = cfg, tokenizer, int(block_size)
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.text_field = cfg.get("text_field", "text")
        self.batch_docs = int(cfg.get("tokenize_batch_size", 16))
        self.eos = eos_id(tokenizer)
        self.source = str(cfg.get("path"))
        stream = open_stream(cfg, cfg.get("split", "train"))
        n_val = int(cfg.get("val_documents", 50))
        if cfg.get("val_split"):
            self._val_stream, train = open_stream(cfg, cfg["val_split"]), stream
        else:
            self._val_stream, train = stream.take(n_val), stream.skip(n_val)
        buffer = int(cfg.get("shuffle_buffer", 1000))
        self._train = train.shuffle(seed=self.seed, buffer_size=buffer) if buffer > 0 else train
        self.epoch, self.docs_read, self.buffer = 0, 0, []  # the position (this rank's)
        self.start = 0  # the stream index this epoch's sharding starts at (> 0 only after a re-shard)
        self._docs: Iterator[str] | None = None
        self._val_blocks: np.ndarray | None = None

    def _documents(self, epoch: int, skip: int) -> Iterator[str]:
        """This rank's documents of ``epoch``, after the first ``skip`` of them."""
        if hasattr(self._train, "set_epoch"):
            self._train.set_epoch(epoch)  # a new shuffle order each epoch, the same for every rank
        start = self.start if epoch == self.epoch else 0
        mine = itertools.islice(self._train, start + self.rank, None, self.world_size)
        for i, example in enumerate(itertools.islice(mine, skip, None), skip):
            text = example.get(self.text_field)
            if not isinstance(text, str):
                raise DataError(f"{self.source}: document {i} of rank {self.rank}, epoch {epoch}: "
                                f"text field {self.text_field!r} is missing or not a string (keys: {sorted(example)})")  # fmt: skip
            yield text

    def _fill(self, need: int) -> None:
        """Tokenize documents until the buffer holds ``need`` tokens."""
        empty_epochs = 0
        while len(self.buffer) < need:
            if self._docs is None:
                self._docs = self._documents(self.epoch, self.docs_read)
            texts = list(itertools.islice(self._docs, self.batch_docs))
            if not texts:  # the epoch is over: start the next one
                empty_epochs = empty_epochs + 1 if self.docs_read == 0 else 0
                if empty_epochs > 1:
                    raise DataError(f"{self.source}: rank {self.rank} of {self.world_size} gets no documents")
                self.epoch, self.docs_read, self.start, self._docs = self.epoch + 1, 0, 0, None
                continue
            for ids in encode_batch(self.tokenizer, texts):
                self.buffer.extend(ids)
                self.buffer.append(self.eos)
            self.docs_read += len(texts)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)`` (B, T) int64: blocks of T+1 tokens, labels shifted by one."""
        T, rows = self.block_size, []
        for _ in range(batch_size):
            self._fill(T + 1)
            rows.append(self.buffer[: T + 1])
            self.buffer = self.buffer[T:]  # the block's last token starts the next one
        blocks = torch.tensor(rows, dtype=torch.long)  # (B, T+1)
        return blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()

    def val_batches(self, n: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``n`` batches of the held-out documents, packed like training (same on every rank)."""
        if self._val_blocks is None:
            tokens: list[int] = []
            for example in self._val_stream:
                tokens.extend(encode_batch(self.tokenizer, [example[self.text_field]])[0])
                tokens.append(self.eos)
            T, count = self.block_size, (len(tokens) - 1) // self.block_size
            self._val_blocks = np.array([tokens[i * T : i * T + T + 1] for i in range(count)], dtype=np.int64)
            self._val_blocks = self._val_blocks.reshape(count, T + 1)
        for b in range(n):
            chunk = self._val_blocks[b * batch_size : (b + 1) * batch_size]
            if len(chunk) == 0:
                return
            blocks = torch.from_numpy(chunk)
            yield blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()

    def state_dict(self) -> dict[str, Any]:
        """This rank's position: epoch, documents read this epoch, and tokens read but not yet used."""
        return {"kind": "streaming", "rank": self.rank, "world_size": self.world_size, "seed": self.seed,
                "block_size": self.block_size, "epoch": self.epoch, "docs_read": self.docs_read,
                "start": self.start, "buffer": list(self.buffer)}  # fmt: skip

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved position: this rank's dict, or the list of every rank's.

        A list saved by a different number of ranks W is re-sharded onto this run's W' ranks:
        in the latest epoch any old rank reached, the new ranks start after the last document
        read (old rank r read stream indices ``start + r + W*i``, i < docs_read); the unused
        tokens of old rank r go to new rank ``r mod W'``. Documents an old rank had not reached
        yet (or the rest of an older epoch) are skipped, none is read twice.
        """
        if isinstance(state, list):
            if len(state) != self.world_size:
                return self._load_resharded(state)
            state = state[self.rank]
        for key in ("kind", "rank", "world_size", "seed", "block_size"):
            want = "streaming" if key == "kind" else getattr(self, key)
            if state.get(key) != want:
                raise DataError(f"data state: {key} is {state.get(key)!r} in the checkpoint but {want!r} now")
        self.epoch, self.docs_read = int(state["epoch"]), int(state["docs_read"])
        self.start = int(state.get("start", 0))
        self.buffer, self._docs = list(state["buffer"]), None  # the stream re-opens and skips on next use

    def _load_resharded(self, states: list[dict]) -> None:
        old_world = len(states)
        for r, st in enumerate(states):
            for key in ("kind", "seed", "block_size"):
                want = "streaming" if key == "kind" else getattr(self, key)
                if st.get(key) != want:
                    raise DataError(f"data state of rank {r}: {key} is {st.get(key)!r} in the checkpoint "
                                    f"but {want!r} now")  # fmt: skip
            if st.get("world_size") != old_world or st.get("rank") != r:
                raise DataError(f"data state: entry {r} is rank {st.get('rank')!r} of {st.get('world_size')!r}, "
                                f"expected rank {r} of {old_world}")  # fmt: skip
        epoch = max(int(st["epoch"]) for st in states)
        ends = [int(st.get("start", 0)) + r + old_world * (int(st["docs_read"]) - 1) + 1
                for r, st in enumerate(states) if int(st["epoch"]) == epoch and int(st["docs_read"]) > 0]  # fmt: skip
        starts = [int(st.get("start", 0)) for st in states if int(st["epoch"]) == epoch]  # none read yet
        self.epoch, self.start, self.docs_read, self._docs = epoch, max(ends + starts), 0, None
        self.buffer = [t for r, st in enumerate(states) if r % self.world_size == self.rank for t in st["buffer"]]


def build_streaming_data(cfg: dict, tokenizer, block_size: int, *, rank: int = 0, world_size: int = 1,
                         seed: int = 0) -> StreamingData:  # fmt: skip
    """Check the ``type: streaming`` keys and build a :class:`StreamingData`."""
    unknown = sorted(set(cfg) - STREAMING_KEYS)
    if unknown:
        raise DataError(f"unknown data key(s) {unknown} for type streaming; known: {sorted(STREAMING_KEYS)}")
    if "path" not in cfg:
        raise DataError("data.path is missing (a hub data set name, or local files with provider: local)")
    return StreamingData(cfg, tokenizer, block_size, rank=rank, world_size=world_size, seed=seed)

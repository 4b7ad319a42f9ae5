"""Pretraining data: text files -> token ids -> fixed-size blocks -> ``(input_ids, labels)`` batches.

The trainer sees one small object::

    data = build_pretrain_data(cfg["data"], tokenizer, block_size=256, rank=0, world_size=1, seed=0)
    x, y = data.next_batch(8)            # (8, 256) long each; y is x shifted by one token
    state = data.state_dict()            # the data position, saved in every checkpoint
    data.load_state_dict(state)          # a resumed run continues there and sees no block twice
    for x, y in data.val_batches(4, 8):  # held-out blocks, never trained on
        ...

How local data becomes batches (``type: local``):

1. **Read** every file of ``path`` (a file, a folder or a glob) with Hugging Face ``datasets``
   (``load_dataset("json" | "text" | "parquet", data_files=...)``): one document per JSON line,
   per Parquet row, or per ``.txt`` file. A broken file stops with an error naming the file and
   the line (malformed JSON, missing ``text_field``, empty file).
2. **Tokenize** in batches of documents with the course tokenizer (a progress bar; set
   ``TQDM_DISABLE=1`` to hide it) and append ``<|endoftext|>`` after every document, so the model
   learns where one ends. The ids are **cached** in one ``.npy`` file (uint16 when the vocabulary
   fits, else uint32) named by a hash of the files (path, size, modification time), the reader
   settings and the tokenizer: the second run loads it in milliseconds.
3. **Pack** the token stream into blocks of ``block_size + 1`` tokens. Block ``i`` is
   ``tokens[i*T : i*T + T + 1]``: consecutive blocks share one token, so every token is a target
   exactly once. ``input_ids = block[:-1]``, ``labels = block[1:]`` (the model at position t
   predicts token t+1; the trainer does **not** shift again).
4. **Hold out** the last ``val_fraction`` of the blocks for validation.
5. **Shuffle** the training blocks with a permutation seeded by ``(seed, epoch)`` and give rank
   ``r`` of ``world_size`` every ``world_size``-th block of it (all ranks get the same count, so
   they stay in step). The position is ``(epoch, cursor)``: ``state_dict()`` stores it, and the
   same seed rebuilds the same permutation, so a resumed run picks up at the next unseen block.
   A run resumed with a different number of ranks converts the position to the number of
   blocks of the epoch read by all ranks together and back (see :meth:`PackedData.load_state_dict`).

``type: streaming`` reads a data set as it downloads (or local files lazily) and packs on the
fly: see :mod:`llm_course.data.streaming`.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from llm_course import paths

FORMATS = {"jsonl": "json", "json": "json", "txt": "text", "text": "text", "parquet": "parquet"}
EXTENSIONS = {"json": (".jsonl", ".json"), "text": (".txt",), "parquet": (".parquet",)}
LOCAL_KEYS = {"type", "path", "format", "text_field", "val_fraction", "cache_dir", "tokenize_batch_size"}
TOKENIZE_BATCH = 256  # documents per call to the tokenizer


class DataError(ValueError):
    """Bad pretraining data or data config; the message names the file (and line) or the key."""


# ---------------------------------------------------------------- tokenizer helpers
def eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no eos_token_id: pretraining needs one to separate documents")
    return int(eos)


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of several documents, no special tokens added (course or Hugging Face tokenizer)."""
    if hasattr(tokenizer, "encode_batch") and not callable(getattr(tokenizer, "batch_encode_plus", None)):
        out = tokenizer.encode_batch(texts)
        return [e.ids if hasattr(e, "ids") else e for e in out]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]  # a transformers tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary + merges), for cache keys."""
    inner = getattr(tokenizer, "tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    text = inner.to_str() if hasattr(inner, "to_str") else f"{type(tokenizer).__name__}:{len(tokenizer)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- files and their errors
def resolve_files(path: str, reader: str) -> list[Path]:
    """The files named by ``path``: a file, a folder (its files of the format, recursively) or a glob.

    A relative path is looked up from the current folder, then from the repository root.
    """
    if not isinstance(path, str) or not path:
        raise DataError(f"data.path must be a non-empty string (a file, folder or glob), got {path!r}")
    candidates = [Path(path).expanduser()]
    if not candidates[0].is_absolute():
        try:
            candidates.append(paths.repo_root() / path)
        except FileNotFoundError:
            pass
    for base in candidates:
        if base.is_file():
            return [base]
        if base.is_dir():
            files = sorted(p for p in base.rglob("*") if p.is_file() and p.name.endswith(EXTENSIONS[reader]))
            if not files:
                raise DataError(f"data.path {path!r}: the folder {base} holds no {'/'.join(EXTENSIONS[reader])} files")
            return files
        hits = sorted(Path(p) for p in _glob.glob(str(base), recursive=True) if Path(p).is_file())
        if hits:
            return hits
    raise DataError(f"data.path {path!r}: no such file, folder or glob match")


def infer_reader(files: list[Path], fmt: str | None) -> str:
    """The ``datasets`` builder name ("json", "text", "parquet") from ``format`` or the file names."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataError(f"data.format {fmt!r} is not one of {sorted(FORMATS)}")
        return FORMATS[fmt]
    for reader, exts in EXTENSIONS.items():
        if all(f.name.endswith(exts) for f in files):
            return reader
    raise DataError(f"data.format is not set and cannot be told from the file names ({files[0].name}, ...)")


def find_jsonl_problem(path: Path, text_field: str) -> str | None:
    """The first problem of a JSON Lines file as ``"<file>:<line>: ..."``, or None if every line is good."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                return f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})"
            if not isinstance(obj, dict):
                return f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}"
            if text_field not in obj:
                return f"{path}:{n}: missing text field {text_field!r} (keys: {sorted(obj)[:8]})"
            if not isinstance(obj[text_field], str):
                return f"{path}:{n}: field {text_field!r} is {type(obj[text_field]).__name__}, not a string"
    return None


def read_documents(file: Path, reader: str, text_field: str, streaming: bool = False, cache_dir: Path | None = None):
    """One file as a ``datasets`` (Iterable)Dataset with a ``text_field`` column of strings.

    Raises :class:`DataError` naming the file (and the line, for JSON Lines) when it is empty,
    malformed, or lacks the text field.
    """
    import datasets

    if file.stat().st_size == 0 or (reader != "parquet" and not file.read_text("utf-8", "replace").strip()):
        raise DataError(f"{file}: empty file (no documents)")
    if reader == "json":  # datasets' JSON errors name neither file nor line: check first, it is fast
        problem = find_jsonl_problem(file, text_field)
        if problem:
            raise DataError(problem)
    kwargs = {"sample_by": "document"} if reader == "text" else {}
    try:
        ds = datasets.load_dataset(reader, data_files=[str(file)], split="train", streaming=streaming,
                                   cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)  # fmt: skip
    except Exception as e:  # noqa: BLE001 -- re-raised with the file name
        raise DataError(f"{file}: could not be read as {reader}: {type(e).__name__}: {e}") from e
    if reader == "text":
        ds = ds.rename_column("text", text_field) if text_field != "text" else ds
    columns = ds.column_names if ds.column_names is not None else list(ds.features or [])
    if columns and text_field not in columns:
        raise DataError(f"{file}: missing text field {text_field!r} (columns: {columns})")
    if not streaming and len(ds) == 0:
        raise DataError(f"{file}: empty file (no documents)")
    return ds


# ---------------------------------------------------------------- tokenize + cache
def _cache_key(files: list[Path], reader: str, text_field: str, tokenizer) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(f"{reader}|{text_field}|{tokenizer_fingerprint(tokenizer)}|v1".encode())
    return h.hexdigest()[:20]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def tokenize_files(files: list[Path], reader: str, text_field: str, tokenizer, cache_dir: Path,
                   batch_docs: int = TOKENIZE_BATCH) -> np.ndarray:  # fmt: skip
    """All documents of ``files`` as one 1-D token array, ``<eos>`` after each; cached on disk."""
    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"tokens-{_cache_key(files, reader, text_field, tokenizer)}.npy"
    if cached.is_file():
        return np.load(cached, mmap_mode="r")
    eos, dtype = eos_id(tokenizer), token_dtype(len(tokenizer))
    datasets_ = [read_documents(f, reader, text_field, cache_dir=cache_dir / "hf_datasets") for f in files]  # validate every file first
    chunks: list[np.ndarray] = []
    bar = tqdm(total=sum(len(d) for d in datasets_), desc="tokenizing", unit="doc")
    for file, ds in zip(files, datasets_):
        for start in range(0, len(ds), batch_docs):
            texts = ds[start : start + batch_docs][text_field]
            for row, text in enumerate(texts, start):
                if not isinstance(text, str):
                    raise DataError(f"{file}: document {row}: field {text_field!r} is {type(text).__name__}")
            for ids in encode_batch(tokenizer, texts):
                chunks.append(np.asarray([*ids, eos], dtype=dtype))
            bar.update(len(texts))
    bar.close()
    tokens = np.concatenate(chunks)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, tokens)
    os.replace(tmp, cached)  # atomic: ranks that tokenize at once never read a half-written file
    return tokens


# ---------------------------------------------------------------- packed local data
def epoch_shard(n_items: int, rank: int, world_size: int, seed: int, epoch: int) -> np.ndarray:
    """Rank ``rank``'s item indices of ``epoch``, in reading order: the permutation seeded by
    ``(seed, epoch)``, trimmed to a multiple of ``world_size``, dealt out ``r, r + W, ...``."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_items)
    return perm[: n_items // world_size * world_size][rank::world_size]


class PackedData:
    """Blocks of a 1-D token array: shuffled, sharded training batches and held-out validation.

    Args:
        tokens: 1-D int array, documents separated by ``<eos>``.
        block_size: T, the model's context length: each example is T+1 tokens.
        val_fraction: the last fraction of the blocks, held out (at least one block if > 0).
        rank, world_size: this process reads blocks ``perm[rank::world_size]`` of each epoch.
        seed: the permutation of epoch e is ``default_rng([seed, e]).permutation``.
    """

    can_reshard = True  # load_state_dict accepts a position saved by another number of ranks

    def __init__(self, tokens: np.ndarray, block_size: int, *, val_fraction: float = 0.05,
                 rank: int = 0, world_size: int = 1, seed: int = 0, source: str = "tokens"):  # fmt: skip
        if not (0 <= rank < world_size):
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if not (0.0 <= val_fraction < 1.0):
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.tokens, self.block_size = tokens, int(block_size)
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        n_blocks = (len(tokens) - 1) // self.block_size
        n_val = max(1, round(n_blocks * val_fraction)) if val_fraction > 0 else 0
        self.num_train_blocks, self.num_val_blocks = n_blocks - n_val, n_val
        self.blocks_per_rank = self.num_train_blocks // world_size
        if self.blocks_per_rank < 1:
            raise DataError(
                f"{source}: {len(tokens)} tokens make {n_blocks} blocks of {self.block_size}+1 tokens, "
                f"{n_val} held out: too few for {world_size} rank(s); use more data or a smaller block_size"
            )
        self.epoch, self.cursor = 0, 0  # the position: blocks of this epoch's shard already returned
        self._perm_epoch, self._shard = -1, np.empty(0, dtype=np.int64)

    def _block(self, i: int) -> np.ndarray:
        start = i * self.block_size
        return np.asarray(self.tokens[start : start + self.block_size + 1], dtype=np.int64)  # (T+1,)

    def _stack(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.from_numpy(np.stack([self._block(int(i)) for i in idx]))  # (B, T+1)
        return blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()  # (B, T), (B, T)

    def shard(self, epoch: int) -> np.ndarray:
        """The training block indices this rank reads in ``epoch``, in order."""
        if epoch != self._perm_epoch:
            self._shard = epoch_shard(self.num_train_blocks, self.rank, self.world_size, self.seed, epoch)
            self._perm_epoch = epoch
        return self._shard

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)``, each (B, T) int64 on the CPU; a new epoch starts when the shard runs out."""
        idx: list[int] = []
        while len(idx) < batch_size:
            shard = self.shard(self.epoch)
            take = shard[self.cursor : self.cursor + batch_size - len(idx)]
            idx.extend(take.tolist())
            self.cursor += len(take)
            if self.cursor >= len(shard):
                self.epoch, self.cursor = self.epoch + 1, 0
        return self._stack(idx)

    def val_batches(self, n: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``n`` batches of held-out blocks, always the same ones in the same order (the
        last may be smaller; fewer batches when the held-out set is small). Same on every rank."""
        first = self.num_train_blocks
        for b in range(n):
            lo = first + b * batch_size
            hi = min(lo + batch_size, first + self.num_val_blocks)
            if lo >= hi:
                return
            yield self._stack(range(lo, hi))

    @property
    def tokens_per_epoch(self) -> int:
        return self.blocks_per_rank * self.world_size * self.block_size

    def state_dict(self) -> dict[str, Any]:
        """The data position. It is the same on every rank (they move in step)."""
        return {"kind": "packed", "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "world_size": self.world_size, "block_size": self.block_size,
                "num_train_blocks": self.num_train_blocks, "rank": self.rank}  # fmt: skip

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved position (a dict, or the list of every rank's dicts).

        A position saved by a different number of ranks is **re-sharded**. With W ranks at
        cursor c, the first ``g = c * W`` blocks of this epoch's permutation have been read (rank
        r read ``perm[r::W]``, all ranks in step). With W' ranks now, each continues at cursor
        ``ceil(g / W')``: the next blocks of the same permutation, none read twice. When g is
        not a multiple of W', the ``ceil(g / W') * W' - g`` blocks (< W') in between are
        skipped for this epoch; past the end of the (now differently trimmed) epoch, the next
        epoch starts. A global batch of the same size then reads the same blocks per step as
        the uninterrupted run would have.
        """
        if isinstance(state, list):
            saved = state[0].get("world_size") if state else None
            state = state[self.rank] if saved == self.world_size and len(state) > self.rank else state[0]
        for key in ("kind", "seed", "block_size", "num_train_blocks"):
            want = "packed" if key == "kind" else getattr(self, key)
            if state.get(key) != want:
                raise DataError(
                    f"data state: {key} is {state.get(key)!r} in the checkpoint but {want!r} now; "
                    "resuming needs the same data, tokenizer, block_size and seed"
                )
        epoch, cursor, saved_world = int(state["epoch"]), int(state["cursor"]), int(state["world_size"])
        if saved_world != self.world_size:
            read = cursor * saved_world  # blocks of this epoch's permutation read by all ranks together
            cursor = -(-read // self.world_size)  # ceil: skip rather than repeat
            if cursor >= self.blocks_per_rank:
                epoch, cursor = epoch + 1, 0
        self.epoch, self.cursor = epoch, cursor


def build_pretrain_data(cfg_data: dict, tokenizer, block_size: int, *, rank: int = 0, world_size: int = 1,
                        seed: int = 0):  # fmt: skip
    """The train config's ``data:`` block -> an object with ``next_batch``, ``val_batches``,
    ``state_dict`` and ``load_state_dict`` (a :class:`PackedData`, or a
    :class:`~llm_course.data.streaming.StreamingData` for ``type: streaming``).

    Local keys: ``type: local``, ``path`` (file, folder or glob), ``format`` (jsonl | txt | parquet;
    default from the file names), ``text_field`` (default ``text``), ``val_fraction`` (default
    0.05), ``cache_dir`` (default ``<runs>/token_cache``), ``tokenize_batch_size``.
    An unknown key is an error that names it.
    """
    if not isinstance(cfg_data, dict):
        raise DataError(f"the data config must be a mapping, got {type(cfg_data).__name__}")
    kind = cfg_data.get("type", "local")
    if kind == "streaming":
        from llm_course.data.streaming import build_streaming_data

        return build_streaming_data(cfg_data, tokenizer, block_size, rank=rank, world_size=world_size, seed=seed)
    if kind != "local":
        raise DataError(f"data.type {kind!r} is not 'local' or 'streaming'")
    unknown = sorted(set(cfg_data) - LOCAL_KEYS)
    if unknown:
        raise DataError(f"unknown data key(s) {unknown} for type local; known: {sorted(LOCAL_KEYS)}")
    if "path" not in cfg_data:
        raise DataError("data.path is missing (a .jsonl/.txt/.parquet file, a folder or a glob)")
    fmt = cfg_data.get("format")  # a folder without format: its .jsonl/.json files
    files = resolve_files(cfg_data["path"], FORMATS.get(fmt, "json") if fmt else "json")
    reader = infer_reader(files, fmt)
    cache_dir = Path(cfg_data["cache_dir"]) if cfg_data.get("cache_dir") else paths.runs_dir() / "token_cache"
    tokens = tokenize_files(files, reader, cfg_data.get("text_field", "text"), tokenizer, cache_dir,
                            int(cfg_data.get("tokenize_batch_size", TOKENIZE_BATCH)))  # fmt: skip
    return PackedData(tokens, block_size, val_fraction=float(cfg_data.get("val_fraction", 0.05)),
                      rank=rank, world_size=world_size, seed=seed, source=str(cfg_data["path"]))  # fmt: skip

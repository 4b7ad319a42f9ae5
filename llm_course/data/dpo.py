"""Preference data for DPO: ``{prompt, chosen, rejected}`` records -> token rows -> ``(input_ids, labels)``.

One JSON object per line::

    {"prompt": "Reverse the list: 4 9 1", "chosen": "1 9 4", "rejected": "1 4 9"}
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
     "chosen": "Hello!", "rejected": "I cannot help with that."}

A string prompt is one user turn; a list is the conversation so far. The prompt is rendered
with the chat template (``configs/tokenizer/chat_template.jinja``, ChatML) **and the
generation prompt** (``<|im_start|>assistant\\n``), exactly what the model sees when it chats;
``chosen`` and ``rejected`` are two assistant replies to it, each followed by ``<|im_end|>``
(the model must learn to stop too). Contents are encoded as plain text (``special_tokens=False``:
a reply holding the text ``<|im_end|>`` cannot end itself); the template's markup with its
special tokens parsed.

The trainer sees the same object as for pretraining (``next_batch`` / ``val_batches`` /
``state_dict`` / ``load_state_dict``)::

    data = build_dpo_data({"type": "local", "path": "data/sample_dpo.jsonl"}, tokenizer, block_size=128)
    x, y = data.next_batch(4)   # (8, T): rows 0..3 the chosen replies, rows 4..7 the rejected ones

``next_batch(B)`` returns **2B rows for B pairs**: the B chosen rows first, then the B rejected
rows in the same order (row i and row B + i are one pair, with the same prompt). Labels are
**pre-shifted** as everywhere in the course (``labels[t]`` is the target of position t, i.e.
token t + 1) and are -100 on the prompt and on the padding, so only the reply's tokens (and
its ``<|im_end|>``) count: a sum of log-probabilities over the labels that are not -100 is the
log-probability of the reply given the prompt. Rows are padded with ``<|endoftext|>`` to the
longest row of the batch (T <= ``block_size``).

**Truncation.** A row holds at most ``block_size + 1`` tokens (``input_ids`` = the first
``block_size``). When prompt + the longer reply does not fit, the prompt is cut **from the
left** first (its end, ``...<|im_start|>assistant\\n``, is what the reply follows), but it keeps
at least half of a row (or all of it, if shorter); then a reply still too long is cut from the
right (it loses its ``<|im_end|>``). Both replies of a pair keep the same prompt. A counter of
cut pairs is in ``data.truncated``.

**Order, ranks, held-out pairs, resume**, as in :mod:`llm_course.data.pretrain` (``type: local``):
every record of ``path`` (a .jsonl file, a folder or a glob) is read and checked; a broken one
is a :class:`DataError` naming the file and the line. The last ``val_fraction`` of the pairs
(default 0.05; at least one), or the records of ``val_path``, are held out. Each epoch shuffles
the training pairs with ``default_rng([seed, epoch])``; rank ``r`` of ``world_size`` reads every
``world_size``-th of them; the position ``(epoch, cursor)`` is what ``state_dict()`` saves.
A run resumed with a different number of ranks continues after the pairs the old ranks read
together (:mod:`llm_course.data.reshard`), in both modes.

``type: streaming`` reads the records lazily (local files with ``provider: local``, or a data
set of the Hugging Face Hub with ``provider: huggingface``, ``subset``, ``split``): the first
``val_examples`` records (default 16) or the ``val_split`` are held out; rank ``r`` keeps the
records ``r`` mod ``world_size``; the position is ``(epoch, records read)`` and a resumed run
re-opens the stream and skips what it read (without tokenizing it).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from llm_course.data.pretrain import DataError, resolve_files
from llm_course.data.reshard import ShuffledShard, check_saved_ranks, reshard_position

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
LOCAL_KEYS = {"type", "path", "val_fraction", "val_path"}
STREAMING_KEYS = {"type", "provider", "path", "subset", "split", "val_split", "val_examples"}


# ---------------------------------------------------------------- records and their errors
def check_record(obj, where: str) -> dict:
    """One parsed record as ``{"messages": [...], "chosen": str, "rejected": str}``, or a
    :class:`DataError` starting with ``where`` (``file:line``)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in obj:
            raise DataError(f"{where}: missing {key!r} (keys: {sorted(obj)[:8]}); a preference record is "
                            '{"prompt": str or [messages], "chosen": str, "rejected": str}')  # fmt: skip
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        messages = prompt
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: prompt message {i} must be {{'role': one of {', '.join(ROLES)}, "
                                f"'content': str}}, got {m!r}")  # fmt: skip
    else:
        raise DataError(f"{where}: 'prompt' must be a string or a non-empty list of messages, got {prompt!r}")
    for key in ("chosen", "rejected"):
        if not isinstance(obj[key], str):
            raise DataError(f"{where}: {key!r} must be a string (the assistant's reply), got {type(obj[key]).__name__}")
    if obj["chosen"] == obj["rejected"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same reply: the pair teaches nothing")
    return {"messages": messages, "chosen": obj["chosen"], "rejected": obj["rejected"]}


def parse_line(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    return check_record(obj, where)


def iter_records(files: list[Path]) -> Iterator[tuple[str, dict]]:
    """``("file:line", record)`` of every non-blank line of ``files``, read lazily and checked."""
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{file}:{n}", parse_line(line, f"{file}:{n}")


def read_records(path: str) -> list[tuple[str, dict]]:
    """Every record of ``path`` (a .jsonl file, a folder or a glob), checked; an empty file is an error."""
    out = []
    for file in resolve_files(path, "json"):
        records = list(iter_records([file]))
        if not records:
            raise DataError(f"{file}: empty file (no preference records)")
        out += records
    return out


# ---------------------------------------------------------------- tokens
class PairEncoder:
    """A record -> ``(prompt_ids, chosen_ids, rejected_ids)`` with the chat template of ``folder``.

    The prompt is rendered with a placeholder per content; the markup between placeholders is
    encoded with special tokens parsed, each content as plain text.
    """

    SLOT = "\ue000{}\ue001"  # private-use characters: never in real text
    _SLOT_RE = re.compile("\ue000(\\d+)\ue001")

    def __init__(self, tokenizer, folder=None):
        from llm_course.generation.chat import load_chat_template

        self.tokenizer = tokenizer
        self.template, self.variables = load_chat_template(folder)
        self.end_id = tokenizer.token_to_id(END_TOKEN)
        self.pad_id = tokenizer.token_to_id(PAD_TOKEN)
        if self.end_id is None or self.pad_id is None:
            raise DataError(f"the tokenizer lacks {END_TOKEN} or {PAD_TOKEN}: DPO needs both (end of reply, padding)")

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from llm_course.generation.chat import render_chat_template

        slots = [{"role": m["role"], "content": self.SLOT.format(i)} for i, m in enumerate(messages)]
        parts = self._SLOT_RE.split(render_chat_template(self.template, slots, True, **self.variables))
        ids: list[int] = []
        for k, part in enumerate(parts):
            if k % 2 == 0:  # the template's markup
                ids += self.tokenizer.encode(part, special_tokens=True) if part else []
            else:
                ids += self.tokenizer.encode(messages[int(part)]["content"], special_tokens=False)
        return ids

    def reply_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, special_tokens=False) + [self.end_id]

    def __call__(self, record: dict) -> tuple[list[int], list[int], list[int]]:
        return self.prompt_ids(record["messages"]), self.reply_ids(record["chosen"]), self.reply_ids(record["rejected"])


def fit_pair(prompt: list[int], chosen: list[int], rejected: list[int], block_size: int):
    """Truncate a pair to rows of at most ``block_size + 1`` tokens (see the module docstring).
    Returns ``(prompt, chosen, rejected, was_cut)``."""
    budget = block_size + 1
    if budget < 2:
        raise DataError(f"block_size={block_size}: a DPO row needs at least one prompt and one reply token")
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= budget:
        return prompt, chosen, rejected, False
    keep = max(budget - longest, min(len(prompt), budget // 2), 1)  # the prompt's last tokens
    prompt = prompt[-keep:]
    room = budget - len(prompt)
    return prompt, chosen[:room], rejected[:room], True


def rows_to_batch(pairs: list[tuple[list[int], list[int], list[int]]], pad_id: int):
    """``(input_ids, labels)`` (2B, T) int64: the B chosen rows, then the B rejected rows; labels
    pre-shifted, -100 on the prompt and the padding; T = the longest row - 1."""
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    T = max(len(p) + len(resp) for p, resp in rows) - 1
    ids = torch.full((len(rows), T + 1), pad_id, dtype=torch.long)
    trained = torch.zeros((len(rows), T + 1), dtype=torch.bool)
    for i, (p, resp) in enumerate(rows):
        ids[i, : len(p) + len(resp)] = torch.tensor(p + resp, dtype=torch.long)
        trained[i, len(p) : len(p) + len(resp)] = True
    labels = torch.where(trained[:, 1:], ids[:, 1:], IGNORE_INDEX)  # (2B, T): the target of position t
    return ids[:, :-1].contiguous(), labels


# ---------------------------------------------------------------- the data object
class DPOData:
    """``next_batch`` / ``val_batches`` / ``state_dict`` over tokenized preference pairs.

    ``source`` gives training pairs with a position (local: a shuffled list; streaming: a
    stream); ``val_pairs`` are the held-out pairs, already tokenized and fitted.
    """

    can_reshard = True  # load_state_dict accepts the positions saved by another number of ranks

    def __init__(self, source, val_pairs: list, *, pad_id: int):
        self.source, self.val_pairs, self.pad_id = source, val_pairs, pad_id

    @property
    def truncated(self) -> int:
        return self.source.truncated

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)``, each (2 * batch_size, T): ``batch_size`` pairs, chosen rows first."""
        return rows_to_batch([self.source.next_pair() for _ in range(batch_size)], self.pad_id)

    def val_batches(self, n: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``n`` batches of the held-out pairs, always the same, in order (the last may be smaller)."""
        for b in range(n):
            chunk = self.val_pairs[b * batch_size : (b + 1) * batch_size]
            if not chunk:
                return
            yield rows_to_batch(chunk, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved position: this rank's dict, or the list of every rank's.

        A list saved by a different number of ranks is re-sharded (:mod:`llm_course.data.reshard`):
        the ranks read one pair per row, in step, so the pairs read by all old ranks together are
        a count ``g``; each new rank continues at pair ``ceil(g / W')`` of its share. No pair is
        read twice; fewer than ``W'`` are skipped for this epoch.
        """
        if isinstance(state, list):
            if len(state) != self.source.world_size:
                check_saved_ranks(state, {"kind": self.source.kind, "seed": self.source.seed})
                self.source.reshard(state)
                return
            state = state[self.source.rank]
        self.source.load_state_dict(state)


class _LocalPairs(ShuffledShard):
    """Tokenized training pairs in memory, a permutation per epoch, this rank's share of it."""

    kind = "dpo-local"

    def __init__(self, pairs: list, truncated: int, *, rank: int, world_size: int, seed: int, source: str):
        if not (0 <= rank < world_size):
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        super().__init__(len(pairs), rank, world_size, seed)
        self.pairs, self.truncated = pairs, truncated
        if self.per_rank < 1:
            raise DataError(f"{source}: {len(pairs)} training pair(s), too few for {world_size} rank(s)")

    def next_pair(self):
        pair = self.pairs[self.current()]
        self.advance()
        return pair

    def state_dict(self) -> dict:
        return {"kind": self.kind, "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank, "num_pairs": len(self.pairs)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for key, want in (("kind", self.kind), ("seed", self.seed), ("world_size", self.world_size),
                          ("num_pairs", len(self.pairs))):  # fmt: skip
            if state.get(key) != want:
                raise DataError(f"data state: {key} is {state.get(key)!r} in the checkpoint but {want!r} now; "
                                "resuming needs the same data, seed and number of ranks")  # fmt: skip
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def reshard(self, states: list[dict]) -> None:
        super().reshard(states, {"num_pairs": len(self.pairs)})


class _StreamPairs:
    """Training pairs read lazily from ``records(epoch)`` (an iterable of ``(where, record)``)."""

    kind = "dpo-streaming"

    def __init__(self, records, encode, *, rank: int, world_size: int, seed: int):
        if not (0 <= rank < world_size):
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.records, self.encode = records, encode
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.epoch, self.read, self.truncated = 0, 0, 0
        self._it = None

    def next_pair(self):
        for _ in range(2):  # at most one epoch change per pair
            if self._it is None:
                mine = itertools.islice(self.records(self.epoch), self.rank, None, self.world_size)
                self._it = itertools.islice(mine, self.read, None)
            item = next(self._it, None)
            if item is not None:
                self.read += 1
                where, record = item
                prompt, chosen, rejected, cut = self.encode(record)
                self.truncated += cut
                return prompt, chosen, rejected
            if self.read == 0:
                raise DataError(f"the preference stream gives rank {self.rank} of {self.world_size} no records")
            self.epoch, self.read, self._it = self.epoch + 1, 0, None
        raise DataError("the preference stream is empty")

    def state_dict(self) -> dict:
        return {"kind": self.kind, "epoch": self.epoch, "read": self.read, "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for key, want in (("kind", self.kind), ("seed", self.seed), ("world_size", self.world_size)):
            if state.get(key) != want:
                raise DataError(f"data state: {key} is {state.get(key)!r} in the checkpoint but {want!r} now")
        self.epoch, self.read, self._it = int(state["epoch"]), int(state["read"]), None

    def reshard(self, states: list[dict]) -> None:
        """Continue from the positions of another number of ranks (see :mod:`llm_course.data.reshard`);
        past the end of the stream, the next read starts the next epoch."""
        self.epoch, self.read = reshard_position(states, self.world_size, "read")
        self._it = None


def build_dpo_data(cfg_data: dict, tokenizer, block_size: int, *, rank: int = 0, world_size: int = 1,
                   seed: int = 0, folder=None) -> DPOData:  # fmt: skip
    """The DPO config's ``data:`` block -> a :class:`DPOData` (see the module docstring for the keys).

    ``tokenizer``: a course tokenizer (:func:`llm_course.tokenizer.load_tokenizer`); ``folder``:
    where the chat template is read (default: the course's ``configs/tokenizer/``).
    """
    if not isinstance(cfg_data, dict):
        raise DataError(f"the data config must be a mapping, got {type(cfg_data).__name__}")
    kind = cfg_data.get("type", "local")
    keys = {"local": LOCAL_KEYS, "streaming": STREAMING_KEYS}.get(kind)
    if keys is None:
        raise DataError(f"data.type {kind!r} is not 'local' or 'streaming'")
    unknown = sorted(set(cfg_data) - keys)
    if unknown:
        raise DataError(f"unknown data key(s) {unknown} for a DPO data set of type {kind}; known: {sorted(keys)}")
    if "path" not in cfg_data:
        raise DataError("data.path is missing (a .jsonl file of {prompt, chosen, rejected} records, a folder or a glob)")
    encoder = PairEncoder(tokenizer, folder)

    def encode(record):
        return fit_pair(*encoder(record), block_size)

    if kind == "local":
        records = read_records(cfg_data["path"])
        val_fraction = float(cfg_data.get("val_fraction", 0.0 if cfg_data.get("val_path") else 0.05))
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if cfg_data.get("val_path"):
            val_records = read_records(cfg_data["val_path"])
        else:
            n_val = max(1, round(len(records) * val_fraction)) if val_fraction > 0 else 0
            records, val_records = records[: len(records) - n_val], records[len(records) - n_val :]
        fitted = [encode(r) for _, r in records]
        source = _LocalPairs([f[:3] for f in fitted], sum(f[3] for f in fitted), rank=rank, world_size=world_size,
                             seed=seed, source=str(cfg_data["path"]))  # fmt: skip
        return DPOData(source, [encode(r)[:3] for _, r in val_records], pad_id=encoder.pad_id)

    provider = cfg_data.get("provider", "local")
    if provider == "local":
        files = resolve_files(cfg_data["path"], "json")

        def stream(split=None):
            return iter_records(files)
    elif provider == "huggingface":
        import datasets

        def stream(split=None):
            ds = datasets.load_dataset(cfg_data["path"], cfg_data.get("subset"),
                                       split=split or cfg_data.get("split", "train"), streaming=True)  # fmt: skip
            return ((f"{cfg_data['path']}:{i + 1}", check_record(dict(x), f"{cfg_data['path']} record {i + 1}"))
                    for i, x in enumerate(ds))  # fmt: skip
    else:
        raise DataError(f"data.provider {provider!r} is not 'local' or 'huggingface'")
    n_val = int(cfg_data.get("val_examples", 16))
    if cfg_data.get("val_split"):
        val_records, skip = list(stream(cfg_data["val_split"])), 0
    else:
        val_records, skip = list(itertools.islice(stream(), n_val)), n_val
    source = _StreamPairs(lambda epoch: itertools.islice(stream(), skip, None), encode, rank=rank,
                          world_size=world_size, seed=seed)  # fmt: skip
    return DPOData(source, [encode(r)[:3] for _, r in val_records], pad_id=encoder.pad_id)

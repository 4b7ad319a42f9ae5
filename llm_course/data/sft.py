"""Supervised fine-tuning data: chat records -> tokens -> a loss mask -> ``(input_ids, labels)`` batches.

A chat model is fine-tuned on conversations, one JSON object per line::

    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "Reverse: a b c"},
                  {"role": "assistant", "content": "c b a"}]}

The trainer sees the same small object as for pretraining
(:func:`llm_course.data.pretrain.build_pretrain_data`), so ``trainer.train`` takes it unchanged::

    data = build_sft_data({"type": "chat", "path": "data/sample_sft.jsonl"}, tokenizer, block_size=128)
    x, y = data.next_batch(8)      # (8, 128) int64 each; y[t] is the target of position t, or -100
    data.state_dict() / data.load_state_dict(state) / data.val_batches(n, batch_size)

**What is trained.** The model learns to *write the assistant's replies*, not to predict
the user: the loss counts only the assistant turns' content tokens and the ``<|im_end|>``
that closes each of them (so the model learns to stop). The chat markup that opens a
turn (``<|im_start|>assistant\\n``) is given at inference time by the chat template's
generation prompt, so it is not trained; neither are system and user messages, nor the
``\\n`` after ``<|im_end|>``. Every other position has the label -100, which the
cross-entropy ignores. Labels are **pre-shifted**, as in pretraining:
``labels[t] = ids[t + 1]`` when token t + 1 is trained, else -100.

**How the tokens are made (piece by piece).** The conversation is rendered with the
tokenizer folder's chat template (``configs/tokenizer/chat_template.jinja``: ChatML), with
a placeholder in place of each message's content. The text between placeholders is the
template's own markup (``<|im_start|>user\\n``, ``<|im_end|>\\n<|im_start|>assistant\\n``, ...),
encoded with special-token strings parsed to their ids; each content is encoded on its own
as plain text (``special_tokens=False``: a message that contains the text ``<|im_end|>``
cannot close itself). The ids of the conversation are these pieces' ids one after the other,
so the boundary between markup and content falls exactly between two tokens, and the mask
is exact by construction. This is also what the model meets when it chats: the prompt ends
with ``<|im_start|>assistant\\n`` and the reply's tokens start afresh after it. (Encoding the
whole text at once gives the same ids unless a content starts with whitespace that BPE
would merge with the template's ``\\n``.) The markup of a role sequence is rendered once and
reused; a template whose markup depends on the contents is refused with an error.

:func:`chat_pieces` returns these pieces with their kinds, and :func:`conversation_mask`
the ids and the per-token "trained" flags of one conversation (for drawing the mask).

**Padded or packed.** ``packing: false``: each example gets a row of its own, padded
with ``<|endoftext|>`` (label -100). ``packing: true``: whole examples are concatenated
into the row while they fit (an example is never cut in two, so every trained token sees
its whole prompt); the rest of the row is padding. Across an example boundary the label is
-100 automatically (the next example starts with untrained markup), but **attention does
cross examples**: the model is causal over the whole row, so the second example's tokens
can attend to the first's. The course's models have no per-document attention mask; the
examples are unrelated, so the model learns to ignore what came before
``<|im_start|>``, at a small cost in quality for much less padding. An example longer than
``block_size + 1`` tokens is truncated (a warning counts them); one left with no trained
token is dropped (it would only cost time, and a batch of nothing but -100 has no loss).

**Order, ranks, held-out set, resume** (``type: chat``, local files): every record of
``path`` (a .jsonl file, a folder of them or a glob) is read and checked; a broken one is an
error naming the file and the line (malformed JSON, no ``messages``, an unknown role, a
content that is not a string, no assistant turn). ``val_fraction`` of the examples, chosen
by a fixed permutation (the same for every training seed), or the records of ``val_path``,
are held out. Each epoch shuffles the training examples with ``default_rng([seed, epoch])``;
rank ``r`` of ``world_size`` reads every ``world_size``-th of them. The position is
``(epoch, cursor)``: ``state_dict()`` saves it, and a resumed run continues with the next
example it has not used, so it sees no example twice. A run resumed with a different number
of ranks continues after the last example the old ranks used (:mod:`llm_course.data.reshard`).

``streaming: true`` reads the records lazily instead (local files line by line, or a data
set of the Hugging Face Hub with ``provider: huggingface``), as :mod:`llm_course.data.streaming`
does for pretraining: the first ``val_examples`` records are held out, a shuffle buffer of
``shuffle_buffer`` records (seeded by ``(seed, epoch)``) mixes the rest, rank ``r`` keeps the
records ``r`` mod ``world_size``, and a resumed run re-opens the stream and skips (without
tokenizing) the records it already used (re-sharded as above when the number of ranks changed).
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from llm_course.data.pretrain import DataError, resolve_files
from llm_course.data.reshard import ShuffledShard, check_saved_ranks, reshard_position

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
END_TOKEN = "<|im_end|>"
CHAT_KEYS = {"type", "path", "packing", "val_fraction", "val_path", "streaming", "provider", "subset", "split",
             "val_split", "val_examples", "shuffle_buffer"}  # fmt: skip
VAL_SPLIT_SEED = 20240607  # the held-out examples do not change with the training seed
# Piece kinds (see chat_pieces): markup, system/user content, assistant content, the <|im_end|> closing a turn
TEMPLATE, PROMPT, ASSISTANT, END = "template", "prompt", "assistant", "end"


class SFTTruncationWarning(UserWarning):
    """Some examples are longer than a row (``block_size + 1`` tokens) and were cut."""


# ---------------------------------------------------------------- records and their errors
def check_record(obj, where: str) -> list[dict]:
    """The ``messages`` of one parsed record, or a :class:`DataError` that starts with ``where`` (file:line)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    if "messages" not in obj:
        raise DataError(f"{where}: missing 'messages' (keys: {sorted(obj)[:8]}); a chat record is "
                        '{"messages": [{"role": ..., "content": ...}, ...]}')  # fmt: skip
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content', got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise DataError(f"{where}: message {i} has role {m.get('role')!r}; the roles are {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} ({m['role']}): 'content' must be a string, "
                            f"got {type(m.get('content')).__name__}")  # fmt: skip
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message: nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_line(line: str, where: str) -> list[dict]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    return check_record(obj, where)


def iter_records(files: list[Path]) -> Iterator[tuple[str, list[dict]]]:
    """``("file:line", messages)`` of every non-blank line of ``files``, read lazily and checked."""
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{file}:{n}", parse_line(line, f"{file}:{n}")


def read_records(path: str) -> list[tuple[str, list[dict]]]:
    """Every record of ``path`` (a .jsonl file, a folder or a glob), checked; an empty file is an error."""
    files = resolve_files(path, "json")
    out = []
    for file in files:
        records = list(iter_records([file]))
        if not records:
            raise DataError(f"{file}: empty file (no chat records)")
        out += records
    return out


# ---------------------------------------------------------------- rendering and the mask
def _encode(tokenizer, texts: list[str], special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer.encode_batch(texts, special_tokens=special_tokens)


class ChatEncoder:
    """Conversations -> ``(ids, trained)`` with the chat template of ``folder`` and ``tokenizer``.

    ``tokenizer``: a course tokenizer (:func:`llm_course.tokenizer.load_tokenizer`: ``encode`` /
    ``encode_batch`` with ``special_tokens=``). ``folder``: where the chat template is read
    (default: the course's ``configs/tokenizer/``).
    """

    SLOT = "\ue000{}\ue001"  # a placeholder for content i (private-use characters: never in real text)
    _SLOT_RE = re.compile("\ue000(\\d+)\ue001")

    def __init__(self, tokenizer, folder=None):
        from llm_course.generation.chat import load_chat_template

        self.tokenizer, self.folder = tokenizer, folder
        self.template, self.variables = load_chat_template(folder)
        self.end_id = tokenizer.token_to_id(END_TOKEN)
        if self.end_id is None:
            raise DataError(f"the tokenizer has no {END_TOKEN} token: SFT needs it to end the assistant turns")
        self._skeletons: dict[tuple[str, ...], list[list[int]]] = {}

    def _render(self, messages: list[dict]) -> str:
        from llm_course.generation.chat import render_chat_template

        return render_chat_template(self.template, messages, False, **self.variables)

    def skeleton(self, messages: list[dict], where: str = "") -> list[list[int]]:
        """The ids of the template's markup around the contents of a conversation with these roles:
        ``n + 1`` id lists (before content 0, between 0 and 1, ..., after the last). Cached per role sequence."""
        roles = tuple(m["role"] for m in messages)
        if roles in self._skeletons:
            return self._skeletons[roles]
        text = self._render([{"role": r, "content": self.SLOT.format(i)} for i, r in enumerate(roles)])
        parts = self._SLOT_RE.split(text)  # markup, "0", markup, "1", ..., markup
        order = [int(p) for p in parts[1::2]]
        if order != list(range(len(roles))):
            raise DataError(f"{where}: the chat template of {self.folder or 'configs/tokenizer'} does not write each "
                            f"message's content once, in order (found {order}): SFT cannot mask it")  # fmt: skip
        markup = parts[0::2]
        filled = "".join(itertools.chain.from_iterable(zip(markup, [m["content"] for m in messages] + [""])))
        if filled != self._render(messages):
            raise DataError(f"{where}: the chat template's markup depends on the message contents; the SFT mask "
                            "needs markup that depends on the roles only")  # fmt: skip
        ids = _encode(self.tokenizer, markup, special_tokens=True)
        for i, role in enumerate(roles):
            if role == "assistant" and (not ids[i + 1] or ids[i + 1][0] != self.end_id):
                raise DataError(f"{where}: the chat template does not close an assistant message with {END_TOKEN} "
                                f"right after its content: {markup[i + 1]!r}")  # fmt: skip
        self._skeletons[roles] = ids
        return ids

    def pieces(self, messages: list[dict], contents: list[list[int]] | None = None,
               where: str = "") -> list[tuple[str, list[int]]]:  # fmt: skip
        """``[(kind, ids), ...]`` in order; kind is template | prompt | assistant | end (see :func:`chat_pieces`)."""
        markup = self.skeleton(messages, where)
        if contents is None:
            contents = _encode(self.tokenizer, [m["content"] for m in messages], special_tokens=False)
        out: list[tuple[str, list[int]]] = [(TEMPLATE, markup[0])]
        for m, content, after in zip(messages, contents, markup[1:]):
            out.append((ASSISTANT if m["role"] == "assistant" else PROMPT, list(content)))
            if after and after[0] == self.end_id:  # the <|im_end|> that closes this message
                out += [(END, after[:1]), (TEMPLATE, after[1:])]
            else:
                out.append((TEMPLATE, after))
        return [(k, ids) for k, ids in out if ids or k != TEMPLATE]  # an empty reply still ends with <|im_end|>

    def encode(self, messages, contents=None, where: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(ids, trained)`` (int32, bool): trained[j] is True when token j is a training target."""
        return pieces_to_mask(self.pieces(messages, contents, where))


def pieces_to_mask(pieces: list[tuple[str, list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate pieces; a token is trained when it is assistant content, or the ``end`` piece that
    directly follows assistant content."""
    ids, trained, prev = [], [], None
    for kind, piece in pieces:
        on = kind == ASSISTANT or (kind == END and prev == ASSISTANT)
        ids += piece
        trained += [on] * len(piece)
        prev = kind
    return np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool)


def chat_pieces(messages: list[dict], tokenizer=None, folder=None) -> list[tuple[str, list[int]]]:
    """One conversation as ``(kind, token ids)`` pieces, in order:

    * ``template``: the chat markup (``<|im_start|>user\\n``, the ``\\n`` after ``<|im_end|>``, ...);
    * ``prompt``: the content of a system or user message;
    * ``assistant``: the content of an assistant message;
    * ``end``: the ``<|im_end|>`` that closes a message.

    Trained: ``assistant`` pieces and the ``end`` right after each. Empty markup is left out; a
    message's content is always there (an empty reply is an empty ``assistant`` piece, and its
    ``<|im_end|>`` is trained: the model learns to stop at once).
    """
    from llm_course.tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer(folder)
    return ChatEncoder(tokenizer, folder).pieces(check_record({"messages": messages}, "messages"), where="messages")


def conversation_mask(messages: list[dict], tokenizer=None, folder=None) -> tuple[list[int], list[bool]]:
    """The token ids of one conversation and, per token, whether the loss trains the model to write it.

    (The label of position t is token t + 1 when ``trained[t + 1]``.) For the notebook's drawing.
    """
    ids, trained = pieces_to_mask(chat_pieces(messages, tokenizer, folder))
    return ids.tolist(), trained.tolist()


def row_from_examples(examples: list[tuple[np.ndarray, np.ndarray]], block_size: int,
                      pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One row: the examples' tokens one after the other, padded to ``block_size + 1`` tokens;
    ``input_ids = row[:-1]``, ``labels[t] = row[t + 1]`` if that token is trained, else -100. Both (T,)."""
    T = block_size
    ids = np.full(T + 1, pad_id, dtype=np.int64)
    trained = np.zeros(T + 1, dtype=bool)
    at = 0
    for e_ids, e_trained in examples:
        n = len(e_ids)
        if at + n > T + 1:
            raise ValueError(f"row_from_examples: the examples hold more than block_size + 1 = {T + 1} tokens")
        ids[at : at + n], trained[at : at + n] = e_ids, e_trained
        at += n
    ids_t = torch.from_numpy(ids)
    labels = torch.where(torch.from_numpy(trained[1:]), ids_t[1:], IGNORE_INDEX)  # (T,): shifted by one
    return ids_t[:-1].clone(), labels


def truncate(ids: np.ndarray, trained: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Keep the first ``block_size + 1`` tokens (a row); returns (ids, trained, was_cut)."""
    cut = len(ids) > block_size + 1
    return (ids[: block_size + 1], trained[: block_size + 1], cut) if cut else (ids, trained, False)


# ---------------------------------------------------------------- sources of examples with a position
@dataclass
class Stats:
    """Counts of what happened to the examples (local: all of them; streaming: those read so far)."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # truncated to nothing trained
    warned: bool = field(default=False, repr=False)


class _LocalSource(ShuffledShard):
    """Training examples in memory; this rank's order of epoch e is ``perm(seed, e)[rank::world_size]``."""

    def __init__(self, examples, rank, world_size, seed):
        super().__init__(len(examples), rank, world_size, seed)
        self.examples = examples

    def peek(self):
        return self.examples[self.current()]

    def position(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "num_train_examples": len(self.examples)}

    def set_position(self, state: dict) -> None:
        if state.get("num_train_examples") != len(self.examples):
            raise DataError(f"data state: {state.get('num_train_examples')} training examples in the checkpoint, "
                            f"{len(self.examples)} now: resuming needs the same data")  # fmt: skip
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def reshard(self, states: list[dict]) -> None:
        super().reshard(states, {"num_train_examples": len(self.examples)})


class _StreamSource:
    """Examples read lazily: ``records(epoch)`` yields this rank's records of an epoch, in order."""

    def __init__(self, records_fn, encode_fn, rank, world_size):
        self.records_fn, self.encode_fn = records_fn, encode_fn
        self.rank, self.world_size = rank, world_size
        self.epoch, self.used = 0, 0  # records of this rank used in this epoch (dropped ones included)
        self._it, self._next = None, None  # iterator over (index, example) and the peeked one

    def _open(self):
        mine = itertools.islice(self.records_fn(self.epoch), self.rank, None, self.world_size)
        return itertools.islice(enumerate(mine), self.used, None)  # skip what was used, untokenized

    def peek(self):
        empty_epochs = 0
        while self._next is None:
            if self._it is None:
                self._it = self._open()
            item = next(self._it, None)
            if item is None:
                empty_epochs = empty_epochs + 1 if self.used == 0 else 0
                if empty_epochs > 1:
                    raise DataError(f"rank {self.rank} of {self.world_size} gets no trainable chat records (after the "
                                    f"held-out ones: data.val_examples)")  # fmt: skip
                self.epoch, self.used, self._it = self.epoch + 1, 0, None
                continue
            i, (where, messages) = item
            example = self.encode_fn(messages, where)
            if example is None:  # nothing trained after truncation: skip it, it counts as used
                self.used = i + 1
                continue
            self._next = (i, example)
        return self._next[1]

    def advance(self) -> None:
        self.peek()
        self.used, self._next = self._next[0] + 1, None

    def position(self) -> dict:
        return {"epoch": self.epoch, "used": self.used}

    def set_position(self, state: dict) -> None:
        self.epoch, self.used = int(state["epoch"]), int(state["used"])
        self._it = self._next = None

    def reshard(self, states: list[dict]) -> None:
        """Continue from the positions of another number of ranks (see :mod:`llm_course.data.reshard`);
        past the end of the stream, the next read starts the next epoch."""
        self.epoch, self.used = reshard_position(states, self.world_size, "used")
        self._it = self._next = None


def _shuffle_buffer(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Items in a random order that only needs ``size`` of them in memory (as ``datasets`` shuffles a stream)."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


# ---------------------------------------------------------------- the data object
class SFTData:
    """``next_batch`` / ``val_batches`` / ``state_dict`` / ``load_state_dict`` over chat examples
    (the pretraining protocol; see the module docstring). Built by :func:`build_sft_data`."""

    can_reshard = True  # load_state_dict accepts the positions saved by another number of ranks

    def __init__(self, source, val_examples, *, block_size: int, packing: bool, pad_id: int, rank: int,
                 world_size: int, seed: int, stats: Stats, kind: str):  # fmt: skip
        self.source, self.val_examples = source, val_examples
        self.block_size, self.packing, self.pad_id = int(block_size), bool(packing), int(pad_id)
        self.rank, self.world_size, self.seed, self.stats, self.kind = rank, world_size, int(seed), stats, kind
        self._val_rows: list | None = None

    def _next_row(self) -> tuple[torch.Tensor, torch.Tensor]:
        row = [self.source.peek()]
        self.source.advance()
        used = len(row[0][0])
        while self.packing and used < self.block_size + 1:
            nxt = self.source.peek()
            if used + len(nxt[0]) > self.block_size + 1:
                break  # it starts the next row: an example is never cut in two
            row.append(nxt)
            self.source.advance()
            used += len(nxt[0])
        return row_from_examples(row, self.block_size, self.pad_id)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)``, each (B, T) int64 on the CPU; labels shifted, -100 where not trained."""
        rows = [self._next_row() for _ in range(batch_size)]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def val_batches(self, n: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``n`` batches of the held-out examples, always the same, in the same order, on every rank."""
        if self._val_rows is None:
            self._val_rows, row, used = [], [], 0
            for ex in self.val_examples:
                if row and (not self.packing or used + len(ex[0]) > self.block_size + 1):
                    self._val_rows.append(row_from_examples(row, self.block_size, self.pad_id))
                    row, used = [], 0
                row.append(ex)
                used += len(ex[0])
            if row:
                self._val_rows.append(row_from_examples(row, self.block_size, self.pad_id))
        for b in range(n):
            chunk = self._val_rows[b * batch_size : (b + 1) * batch_size]
            if not chunk:
                return
            yield torch.stack([r[0] for r in chunk]), torch.stack([r[1] for r in chunk])

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (ranks pack different examples, so each has its own)."""
        return {"kind": self.kind, "rank": self.rank, "world_size": self.world_size, "seed": self.seed,
                "block_size": self.block_size, "packing": self.packing, **self.source.position()}  # fmt: skip

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved position: this rank's dict, or the list of every rank's.

        A list saved by a different number of ranks is re-sharded (:mod:`llm_course.data.reshard`):
        the new ranks continue after the last example any old rank used in the latest epoch, so
        none is used twice; a few are skipped for this epoch (fewer than the number of ranks when
        the rows hold one example each; with ``packing``, also those a slower rank had not reached).
        """
        if isinstance(state, list):
            if len(state) != self.world_size:
                check_saved_ranks(state, {key: getattr(self, key) for key in ("kind", "seed", "block_size", "packing")})
                self.source.reshard(state)
                return
            state = state[self.rank]
        for key in ("kind", "rank", "world_size", "seed", "block_size", "packing"):
            if state.get(key) != getattr(self, key):
                raise DataError(f"data state: {key} is {state.get(key)!r} in the checkpoint but {getattr(self, key)!r} "
                                "now; resuming needs the same data, block_size, packing, seed and number of ranks")  # fmt: skip
        self.source.set_position(state)


def _example_maker(encoder: ChatEncoder, block_size: int, stats: Stats):
    def make(messages, where, contents=None):
        ids, trained = encoder.encode(messages, contents, where)
        ids, trained, cut = truncate(ids, trained, block_size)
        stats.examples += 1
        stats.truncated += cut
        if not trained[1:].any():
            stats.dropped += 1
            return None
        return ids, trained

    return make


def _warn_truncated(stats: Stats, block_size: int, source: str) -> None:
    if stats.truncated and not stats.warned:
        stats.warned = True
        warnings.warn(f"{source}: {stats.truncated} of {stats.examples} chat examples are longer than block_size + 1 = "
                      f"{block_size + 1} tokens and were truncated; {stats.dropped} of them kept no assistant token "
                      "and were dropped. Raise block_size or shorten the data.", SFTTruncationWarning, stacklevel=3)  # fmt: skip


def _encode_all(records, make, encoder) -> list:
    """Encode many records, contents in batches (fast); None for dropped ones."""
    out = []
    for start in range(0, len(records), 512):
        chunk = records[start : start + 512]
        flat = [m["content"] for _, msgs in chunk for m in msgs]
        contents = iter(_encode(encoder.tokenizer, flat, special_tokens=False))
        for where, msgs in chunk:
            out.append(make(msgs, where, [next(contents) for _ in msgs]))
    return out


def build_sft_data(cfg_data: dict, tokenizer, block_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                   template_folder=None) -> SFTData:  # fmt: skip
    """The train config's ``data:`` block (``type: chat``) -> an :class:`SFTData`.

    Keys: ``path`` (a .jsonl file, folder or glob; with ``provider: huggingface``, a Hub data
    set), ``packing`` (default true), ``val_fraction`` (default 0.05; 0 with ``val_path``),
    ``val_path`` (held-out records of their own), ``streaming`` (default false) and, when
    streaming, ``provider`` (local | huggingface), ``subset``, ``split``, ``val_split``,
    ``val_examples`` (default 50), ``shuffle_buffer`` (default 1000). ``tokenizer``: a course
    tokenizer; ``template_folder``: where the chat template is (default ``configs/tokenizer``).
    An unknown key is an error that names it.
    """
    if not isinstance(cfg_data, dict):
        raise DataError(f"the data config must be a mapping, got {type(cfg_data).__name__}")
    if cfg_data.get("type") != "chat":
        raise DataError(f"data.type {cfg_data.get('type')!r}: SFT reads chat records, set data.type: chat")
    unknown = sorted(set(cfg_data) - CHAT_KEYS)
    if unknown:
        raise DataError(f"unknown data key(s) {unknown} for type chat; known: {sorted(CHAT_KEYS)}")
    if "path" not in cfg_data:
        raise DataError("data.path is missing (a .jsonl file of chat records, a folder or a glob)")
    if not (0 <= rank < world_size):
        raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
    encoder = ChatEncoder(tokenizer, template_folder)
    stats, packing = Stats(), bool(cfg_data.get("packing", True))
    make = _example_maker(encoder, block_size, stats)
    pad_id = tokenizer.token_to_id("<|endoftext|>")  # the padding token: its label is always -100
    if pad_id is None:
        raise DataError("the tokenizer has no <|endoftext|> token to pad with")
    common = dict(block_size=block_size, packing=packing, pad_id=pad_id, rank=rank, world_size=world_size, seed=seed,
                  stats=stats)  # fmt: skip
    val_path = cfg_data.get("val_path")
    val_records = read_records(val_path) if val_path else None

    if cfg_data.get("streaming", False):
        return _build_streaming(cfg_data, encoder, make, val_records, common)

    records = read_records(cfg_data["path"])
    val_fraction = float(cfg_data.get("val_fraction", 0.0 if val_path else 0.05))
    if not (0.0 <= val_fraction < 1.0):
        raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if val_records is None:
        n_val = max(1, round(len(records) * val_fraction)) if val_fraction > 0 else 0
        held = set(np.random.default_rng(VAL_SPLIT_SEED).permutation(len(records))[:n_val].tolist())
        val_records = [r for i, r in enumerate(records) if i in held]
        records = [r for i, r in enumerate(records) if i not in held]
    train = [e for e in _encode_all(records, make, encoder) if e is not None]
    val = [e for e in _encode_all(val_records, make, encoder) if e is not None]
    _warn_truncated(stats, block_size, str(cfg_data["path"]))
    if len(train) // world_size < 1:
        raise DataError(f"{cfg_data['path']}: {len(train)} trainable chat example(s) after holding out {len(val)}: "
                        f"too few for {world_size} rank(s)")  # fmt: skip
    return SFTData(_LocalSource(train, rank, world_size, seed), val, kind="sft", **common)


def _build_streaming(cfg: dict, encoder, make, val_records, common) -> SFTData:
    provider, path = cfg.get("provider", "local"), cfg["path"]
    n_val = int(cfg.get("val_examples", 0 if val_records is not None else 50))
    if provider == "local":
        files = resolve_files(path, "json")
        for _ in iter_records(files):  # every record checked (file:line) before training starts; nothing kept
            pass

        def stream(split=None):
            return iter_records(files)
    elif provider == "huggingface":
        import datasets

        def stream(split=None):
            ds = datasets.load_dataset(path, cfg.get("subset"), split=split or cfg.get("split", "train"), streaming=True)
            where = f"{path} ({split or cfg.get('split', 'train')})"
            return ((f"{where} record {i}", check_record(obj, f"{where} record {i}")) for i, obj in enumerate(ds))
    else:
        raise DataError(f"data.provider {provider!r} is not 'local' or 'huggingface'")
    if val_records is None and cfg.get("val_split"):
        val_records = list(stream(cfg["val_split"]))
    elif val_records is None:
        val_records = list(itertools.islice(stream(), n_val))
    skip = 0 if cfg.get("val_path") or cfg.get("val_split") else n_val
    buffer, seed = int(cfg.get("shuffle_buffer", 1000)), common["seed"]

    def records(epoch: int):
        rest = itertools.islice(stream(), skip, None)  # held-out records never reach training
        return _shuffle_buffer(rest, buffer, np.random.default_rng([seed, epoch])) if buffer > 0 else rest

    stats, block_size = common["stats"], common["block_size"]

    def encode_one(messages, where):
        example = make(messages, where)
        _warn_truncated(stats, block_size, str(path))
        return example

    val = [e for e in (make(m, w) for w, m in val_records) if e is not None]
    source = _StreamSource(records, encode_one, common["rank"], common["world_size"])
    return SFTData(source, val, kind="sft-streaming", **common)

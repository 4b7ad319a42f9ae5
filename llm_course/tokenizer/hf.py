"""Byte-level BPE with Hugging Face ``tokenizers``, and the course's default tokenizer.

``llm_course.tokenizer.bpe`` is the algorithm in plain Python; this is the same
algorithm in Rust, a few hundred times faster, in the file format that real
models ship (``tokenizer.json`` + ``tokenizer_config.json``)::

    tok = train_hf_bpe(texts, vocab_size=8192)       # a tokenizers.Tokenizer
    save_tokenizer(tok, "my_tokenizer/")             # tokenizer.json + tokenizer_config.json

    tok = load_tokenizer()                           # the course's default, configs/tokenizer/
    tok.encode("hello")                              # list[int]
    tok.encode(user_text, special_tokens=False)      # "<|im_end|>" in the text stays plain text
    tok.encode_iterable(open("big.txt"))             # ids of a large file, streamed
    tok.decode(ids)                                  # str; an id out of range raises
    tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)

Special tokens (ids 0, 1, 2, before everything the trainer learns):

* ``<|endoftext|>`` -- end of a document; also the padding token, and the token
  that separates documents in pretraining (GPT-2's convention, so it is ``bos`` too);
* ``<|im_start|>``, ``<|im_end|>`` -- around each message of a chat (ChatML, as
  in Qwen2): ``<|im_start|>user\\nhi<|im_end|>\\n``.

The chat template is stored in ``tokenizer_config.json`` and in ``chat_template.jinja``
as the Jinja string Hugging Face ``transformers`` uses; :meth:`CourseTokenizer.apply_chat_template`
produces the same text in plain Python (the tests check that they agree).

:func:`load_tokenizer` checks the files it loads (valid JSON, a byte-level BPE,
the special tokens, a round trip) and names the file and the fix when one is
broken. :func:`time_trainers` times this trainer against the course's own
``ByteBPE.train`` on the same documents.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm_course import paths
from llm_course.tokenizer.stream import check_token_ids, split_stream

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]  # ids 0, 1, 2

# ChatML, in the Jinja syntax of Hugging Face chat templates. The '\\n' are
# Jinja string escapes: the template's text holds a backslash and an n.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # the same template, as its own file (transformers saves it so, and reads it first)

DEFAULT_DIR = paths.configs_dir() / "tokenizer"  # the course's default tokenizer ($LLM_COURSE_CONFIGS_DIR moves it)


def new_byte_level_bpe() -> Tokenizer:
    """An empty byte-level BPE tokenizer: GPT-2's pre-tokenization, bytes shown as printable characters."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_hf_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: list[str] = SPECIAL_TOKENS,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (an iterable of documents).

    The vocabulary holds ``special_tokens`` first (ids 0, 1, ...), then the 256
    byte symbols, then the learned merges, ``vocab_size`` in all.
    """
    tok = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_config(tok: Tokenizer, special_tokens: list[str] = SPECIAL_TOKENS) -> dict:
    """The ``tokenizer_config.json`` of ``tok`` in Hugging Face's format, with the ChatML template."""
    added = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True,
        }
        for t in special_tokens
    }  # fmt: skip
    return {
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in special_tokens if t != EOS_TOKEN],
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def save_tokenizer(tok: Tokenizer, out_dir: str | os.PathLike, special_tokens: list[str] = SPECIAL_TOKENS) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=False)
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(tok, special_tokens), f, indent=2, ensure_ascii=False)
        f.write("\n")
    (out / CHAT_TEMPLATE_FILE).write_text(CHAT_TEMPLATE, encoding="utf-8")  # also a file, as transformers saves it
    return out


class CourseTokenizer:
    """A small wrapper around a ``tokenizers.Tokenizer`` and its ``tokenizer_config.json``.

    Attributes:
        vocab_size: int, the number of ids.
        eos_token_id, pad_token_id, bos_token_id: int (all ``<|endoftext|>`` here).
        im_start_id, im_end_id: int, the ChatML markers.
        chat_template: str, the Jinja template from the config (for reference).
        tokenizer: the underlying ``tokenizers.Tokenizer``.
    """

    def __init__(self, tokenizer: Tokenizer, config: dict):
        self.tokenizer = tokenizer
        self.config = config
        self.vocab_size: int = tokenizer.get_vocab_size()
        self.eos_token: str = config["eos_token"]
        self.pad_token: str = config.get("pad_token") or self.eos_token
        self.bos_token: str = config.get("bos_token") or self.eos_token
        self.eos_token_id: int = self._id(self.eos_token)
        self.pad_token_id: int = self._id(self.pad_token)
        self.bos_token_id: int = self._id(self.bos_token)
        self.im_start_id: int = self._id(IM_START)
        self.im_end_id: int = self._id(IM_END)
        self.chat_template: str = config.get("chat_template", CHAT_TEMPLATE)
        self._plain: Tokenizer | None = None  # built on first use by encode(..., special_tokens=False)

    def _id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise KeyError(f"the special token {token!r} is not in this tokenizer's vocabulary")
        return i

    @property
    def special_tokens(self) -> dict[str, int]:
        """``token -> id`` of the special tokens."""
        return {t: self._id(t) for t in dict.fromkeys([self.eos_token, IM_START, IM_END])}

    def __len__(self) -> int:
        return self.vocab_size

    def _encoder(self, special_tokens: bool) -> Tokenizer:
        """The tokenizer that parses special-token strings (True), or one that treats them as text (False)."""
        if special_tokens:
            return self.tokenizer
        if self._plain is None:  # a copy, so that the shared tokenizer is never switched back and forth
            self._plain = Tokenizer.from_str(self.tokenizer.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """``text -> list[int]``; nothing is added (no BOS or EOS).

        Args:
            text: any string.
            special_tokens: True (the default): special-token strings written in the text
                (``"<|im_end|>"``) become their ids. False: they are encoded as plain text,
                like any other characters. Use False for text you did not write (a chat
                user's message), so that it cannot close a message or open a new one.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self._encoder(special_tokens).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], special_tokens: bool = True) -> list[list[int]]:
        """Encode several texts at once (in parallel): a list of id lists."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of str, got one str: use encode")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch takes a list of str; item {i} is a {type(text).__name__}")
        encodings = self._encoder(special_tokens).encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode_iterable(
        self, chunks: Iterable[str], special_tokens: bool = True, buffer_chars: int = 1 << 16
    ) -> Iterator[int]:
        """Encode a stream of text (an open file, a generator of lines) lazily: yields the ids one by one.

        The ids are exactly those of ``encode("".join(chunks))``; memory holds only about
        ``buffer_chars`` characters of text at a time
        (:func:`llm_course.tokenizer.stream.split_stream` says where the text is cut).
        """
        for piece in split_stream(chunks, buffer_chars):
            yield from self.encode(piece, special_tokens=special_tokens)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """``list[int] -> text``; keeps special tokens unless ``skip_special_tokens``.

        An id that is not in the vocabulary (out of range, negative, not an integer)
        raises a ValueError that names it and its position.
        """
        ids = check_token_ids(ids, self.vocab_size)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        """The token's string as stored (bytes shown as printable characters, e.g. 'Ġ' for a space)."""
        return self.tokenizer.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = False
    ) -> str | list[int]:
        """Format a chat in ChatML, exactly as the Jinja ``chat_template`` does.

        Args:
            messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
            add_generation_prompt: end with ``<|im_start|>assistant\\n`` so a model writes the reply.
            tokenize: return the ids instead of the text. The markers become their ids;
                roles and contents are encoded as plain text (``special_tokens=False``), so a
                message that contains ``"<|im_end|>"`` cannot close itself early.
        Returns:
            ``"<|im_start|>user\\nhi<|im_end|>\\n..."`` (or its ids).
        """
        parts = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"each message needs a 'role' and a 'content' string, got {m!r}")
            parts.append((m["role"], m["content"]))
        if not tokenize:
            text = "".join(f"{IM_START}{role}\n{content}{IM_END}\n" for role, content in parts)
            return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")
        ids: list[int] = []
        newline = self.encode("\n")
        for role, content in parts:  # the same ids as encode(text) when no content holds a special token
            body = self.encode(f"{role}\n{content}", special_tokens=False)
            ids += [self.im_start_id, *body, self.im_end_id, *newline]
        if add_generation_prompt:
            ids += [self.im_start_id, *self.encode("assistant\n")]
        return ids

    def __repr__(self) -> str:
        return f"CourseTokenizer(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


# A string that any byte-level BPE must give back unchanged: code, accents, CJK, emoji, odd whitespace.
SELF_CHECK_TEXT = "def f(x):\n\treturn x  # naïve 世界 🐍 e\u0301\r\n  <|endoftext|>"


def _broken(file: Path, problem: str, default: bool) -> ValueError:
    """The error for a tokenizer file that cannot be used: which file, what is wrong, how to fix it."""
    if default:
        fix = "restore it with `git checkout -- configs/tokenizer/` or rebuild it with `llm-course build-tokenizer`"
    else:
        fix = "write it again with `llm_course.tokenizer.hf.save_tokenizer`"
    return ValueError(f"{file}: {problem}; {fix}")


def _read_json(file: Path, default: bool) -> dict:
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise _broken(file, f"not UTF-8 text ({e.reason} at byte {e.start})", default) from None
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): truncated or corrupted"
        raise _broken(file, problem, default) from None
    if not isinstance(spec, dict):
        raise _broken(file, f"holds a JSON {type(spec).__name__}, not an object", default)
    return spec


def _component_type(spec: dict, key: str) -> str | None:
    part = spec.get(key)
    return part.get("type") if isinstance(part, dict) else None


def check_tokenizer_file(file: str | os.PathLike, default: bool = False) -> Tokenizer:
    """Load ``tokenizer.json`` and check that it is a working byte-level BPE; a ValueError names the problem.

    Checks, in order: the file is valid JSON; its model is ``BPE``; its pre-tokenizer and
    decoder are ``ByteLevel`` (without them, spaces and bytes are mangled silently);
    ``tokenizers`` loads it; the special tokens are present; ``SELF_CHECK_TEXT`` comes
    back unchanged from encode and decode. ``default``: the file is the course's own
    (the message then says how to restore it).
    """
    file = Path(file)
    spec = _read_json(file, default)
    for key, expected in (("model", "BPE"), ("pre_tokenizer", "ByteLevel"), ("decoder", "ByteLevel")):
        found = _component_type(spec, key)
        if found != expected:
            raise _broken(file, f"its {key} must be {expected}, found {found or 'none'}", default)
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise _broken(file, f"`tokenizers` cannot load it ({e})", default) from None
    for t in SPECIAL_TOKENS:
        if tok.token_to_id(t) is None:
            raise _broken(file, f"the special token {t!r} is missing", default)
        if tok.encode(t, add_special_tokens=False).ids != [tok.token_to_id(t)]:
            raise _broken(file, f"{t!r} is not an added special token (its text is split like any other)", default)
    back = tok.decode(tok.encode(SELF_CHECK_TEXT, add_special_tokens=False).ids, skip_special_tokens=False)
    if back != SELF_CHECK_TEXT:
        raise _broken(file, f"it fails its round trip: {SELF_CHECK_TEXT!r} comes back as {back!r}", default)
    return tok


def load_tokenizer(path: str | os.PathLike | None = None) -> CourseTokenizer:
    """Load a tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``); default: the course's own.

    The files are checked (:func:`check_tokenizer_file`): a truncated, corrupted or
    incomplete file raises a ValueError that names it and says how to restore it.
    """
    folder = DEFAULT_DIR if path is None else Path(path)
    default = folder.resolve() == DEFAULT_DIR.resolve()  # the course's own: say how to restore it
    file = folder / "tokenizer.json"
    if not file.is_file():
        fix = "rebuild it with `llm-course build-tokenizer`" if default else "is it a tokenizer folder?"
        raise FileNotFoundError(f"no tokenizer.json in {folder}; {fix}")
    tok = check_tokenizer_file(file, default)
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path, default) if config_path.is_file() else tokenizer_config(tok)
    if (folder / CHAT_TEMPLATE_FILE).is_file():  # the template as a file wins, as in transformers
        config["chat_template"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if not isinstance(config.get("eos_token"), str) or tok.token_to_id(config["eos_token"]) is None:
        problem = f"its eos_token {config.get('eos_token')!r} is not a token of tokenizer.json"
        raise _broken(config_path, problem, default)
    return CourseTokenizer(tok, config)


def time_trainers(docs: list[str], num_merges: int = 300, special_tokens: list[str] = SPECIAL_TOKENS) -> dict:
    """Learn ``num_merges`` merges on the same documents with ``ByteBPE.train`` and with ``tokenizers``; time both.

    Args:
        docs: the training documents (a list of str).
        num_merges: merges each trainer learns.
        special_tokens: given to both; ``ByteBPE`` trains on the documents joined by the
            first one (``<|endoftext|>``), which training cuts out again.
    Returns:
        ``{"ours": ByteBPE, "hf": tokenizers.Tokenizer, "ours_s": float, "hf_s": float}``:
        both tokenizers and the seconds each trainer took (``tokenizers`` uses every
        core, ``ByteBPE`` one). Speed is measured here, never asserted.
    """
    from llm_course.tokenizer.bpe import ByteBPE

    text = special_tokens[0].join(docs) if special_tokens else "".join(docs)
    vocab_size = 256 + num_merges + len(special_tokens)  # the same for both
    start = time.perf_counter()
    ours = ByteBPE().train(text, vocab_size=vocab_size, special_tokens=special_tokens)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    hf = train_hf_bpe(docs, vocab_size=vocab_size, special_tokens=special_tokens, min_frequency=0)
    hf_s = time.perf_counter() - start
    return {"ours": ours, "hf": hf, "ours_s": ours_s, "hf_s": hf_s}

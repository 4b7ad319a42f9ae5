"""Byte-level BPE with Hugging Face ``tokenizers``, and the course's default tokenizer.

``llm_course.tokenizer.bpe`` is the algorithm in plain Python; this is the same
algorithm in Rust, a few hundred times faster, in the file format that real
models ship (``tokenizer.json`` + ``tokenizer_config.json``)::

    tok = train_hf_bpe(texts, vocab_size=8192)       # a tokenizers.Tokenizer
    save_tokenizer(tok, "my_tokenizer/")             # tokenizer.json + tokenizer_config.json

    tok = load_tokenizer()                           # the course's default, configs/tokenizer/
    tok.encode("hello")                              # list[int]
    tok.decode(ids)                                  # str
    tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)

Special tokens (ids 0, 1, 2, before everything the trainer learns):

* ``<|endoftext|>`` -- end of a document; also the padding token, and the token
  that separates documents in pretraining (GPT-2's convention, so it is ``bos`` too);
* ``<|im_start|>``, ``<|im_end|>`` -- around each message of a chat (ChatML, as
  in Qwen2): ``<|im_start|>user\\nhi<|im_end|>\\n``.

The chat template is stored in ``tokenizer_config.json`` as the Jinja string
Hugging Face ``transformers`` uses; :meth:`CourseTokenizer.apply_chat_template`
produces the same text in plain Python (the tests check that they agree).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm_course import paths

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

    def encode(self, text: str) -> list[int]:
        """``text -> list[int]``. Special tokens written in the text become their ids; nothing is added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode several texts at once (in parallel): a list of id lists."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """``list[int] -> text``; keeps special tokens unless ``skip_special_tokens``."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

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
            tokenize: return the ids instead of the text.
        Returns:
            ``"<|im_start|>user\\nhi<|im_end|>\\n..."`` (or its ids).
        """
        parts = []
        for m in messages:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"each message needs a 'role' and a 'content' string, got {m!r}")
            parts.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        text = "".join(parts)
        return self.encode(text) if tokenize else text

    def __repr__(self) -> str:
        return f"CourseTokenizer(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


def load_tokenizer(path: str | os.PathLike | None = None) -> CourseTokenizer:
    """Load a tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``); default: the course's own."""
    folder = Path(path) if path is not None else DEFAULT_DIR
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {folder.name}/; rebuild the default tokenizer with `llm-course build-tokenizer`"
        )
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else tokenizer_config(tok)
    return CourseTokenizer(tok, config)

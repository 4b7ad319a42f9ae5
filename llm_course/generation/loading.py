"""Find a model and its tokenizer from one name, for ``llm-course generate`` and the notebooks.

``load_for_generation(name_or_path)`` accepts:

* a model folder (a downloaded Hugging Face model, or a checkpoint the course saved with
  ``save_pretrained``): ``config.json`` + safetensors weights;
* the name of a downloaded model (``gpt2``, ``qwen2-0.5b``: ``llm-course download NAME``);
* a model config: a name in ``configs/model/`` (``gpt2-tiny``) or a ``.yaml`` file. The
  weights are then *random* (a warning says so): the text is gibberish, but every part of
  generation runs.

The tokenizer is the folder's own when it has a ``tokenizer.json`` (GPT-2's, Qwen2's),
else the course's (``configs/tokenizer/``). Either way it is wrapped in a
:class:`FolderTokenizer` with the few methods generation uses.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_course.generation.chat import TEMPLATE_FILE, apply_chat_template, course_tokenizer_dir


class FolderTokenizer:
    """A ``tokenizer.json`` (any Hugging Face fast tokenizer) with what generation needs.

    ``encode(text) -> list[int]`` (special-token strings in the text become their ids, and
    the tokenizer's own post-processing runs, as ``transformers`` does by default);
    ``decode(ids, skip_special_tokens=False) -> str``; ``eos_token_id``; ``token_to_id``;
    ``vocab_size``; ``folder`` (where its chat template is looked for).
    """

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.vocab_size = self.tokenizer.get_vocab_size()
        config_file = self.folder / "tokenizer_config.json"
        self.config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        eos = self.config.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        self.eos_token_id = self.tokenizer.token_to_id(eos) if isinstance(eos, str) else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def has_chat_template(self) -> bool:
        return (self.folder / TEMPLATE_FILE).is_file() or bool(self.config.get("chat_template"))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return apply_chat_template(messages, add_generation_prompt, folder=self.folder)


@dataclass
class Loaded:
    """What :func:`load_for_generation` found."""

    model: torch.nn.Module
    tokenizer: FolderTokenizer
    eos_token_id: list[int]  # every id that ends a reply (from generation_config.json, config.json, the tokenizer)
    source: str  # a sentence: where the weights came from
    random_weights: bool


def _model_folder(name_or_path: str) -> Path | None:
    """The folder of a model: ``name_or_path`` itself, or a downloaded model of that name; None if neither."""
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    from llm_course.models.download import MODELS, local_weights

    if name_or_path in MODELS:
        folder = local_weights(name_or_path)
        if folder is None:
            raise FileNotFoundError(f"{name_or_path!r} is not downloaded: run `llm-course download {name_or_path}` first "
                                    "(or give a config name such as gpt2-tiny for random weights)")  # fmt: skip
        return folder
    if path.is_dir():
        raise FileNotFoundError(f"{path} has no config.json: is it a model folder?")
    return None


def _eos_ids(folder: Path | None, model_config, tokenizer: FolderTokenizer) -> list[int]:
    ids: list[int] = []
    for source in ([folder / "generation_config.json", folder / "config.json"] if folder is not None else []):
        if source.is_file():
            value = json.loads(source.read_text(encoding="utf-8")).get("eos_token_id")
            if value is not None:
                ids += [value] if isinstance(value, int) else list(value)
                break
    if not ids and getattr(model_config, "eos_token_id", None) is not None:
        ids.append(model_config.eos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # a command's --dtype


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype | None]:
    """What a command that loads a model runs in: ``--device`` (default: the GPU when there is one) and
    ``--dtype`` (a key of :data:`DTYPES`; default: float32 on the CPU, the checkpoint's own on a GPU)."""
    from llm_course.device import get_device, is_gpu

    dev = get_device(device)
    return dev, DTYPES[dtype] if dtype else (None if is_gpu(dev) else torch.float32)


def load_for_generation(
    name_or_path: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None, seed: int = 0
) -> Loaded:
    """The model (in eval mode, on ``device``) and its tokenizer; see the module docstring."""
    from llm_course.models.config import load_model_config
    from llm_course.models.hf_weights import build_model, load_pretrained

    folder = _model_folder(str(name_or_path))
    if folder is not None:
        model = load_pretrained(folder, dtype=dtype, device=device)
        source, random_weights = f"weights from {folder}", False
    else:
        config = load_model_config(name_or_path)
        torch.manual_seed(seed)  # the same random model every time
        model = build_model(config, dtype=dtype or torch.float32, device=device).eval()
        source, random_weights = f"{name_or_path}: RANDOM weights (no checkpoint), so the text is gibberish", True
    tok_folder = folder if folder is not None and (folder / "tokenizer.json").is_file() else course_tokenizer_dir()
    tokenizer = FolderTokenizer(tok_folder)
    vocab_size = model.config.vocab_size
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer of {tok_folder} has {tokenizer.vocab_size} tokens, more than the model's "
                         f"vocab_size={vocab_size}: they do not belong together")  # fmt: skip
    return Loaded(model, tokenizer, _eos_ids(folder, model.config, tokenizer), source, random_weights)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)

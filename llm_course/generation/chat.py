"""Chat templates: a conversation as the exact text a chat model was trained on.

A chat model never sees "messages": it sees one text, in the format its fine-tuning used.
The course (and Qwen2) use ChatML::

    <|im_start|>system
    You are helpful.<|im_end|>
    <|im_start|>user
    hi<|im_end|>
    <|im_start|>assistant
                                  <- add_generation_prompt: the model writes the reply from here

and the model ends its reply with ``<|im_end|>`` (so that is where generation stops).

A model folder ships its format as a Jinja template, in ``chat_template.jinja`` or as the
``chat_template`` of ``tokenizer_config.json`` (the course's own: ``configs/tokenizer/``).
:func:`apply_chat_template` renders it the way Hugging Face ``transformers`` does: in
Jinja's sandbox (a template downloaded from the Hub is untrusted code), with
``trim_blocks`` and ``lstrip_blocks``, the special tokens (``bos_token``, ``eos_token``)
as variables, and its helpers ``raise_exception``, ``tojson`` and ``strftime_now``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from llm_course import paths

TEMPLATE_FILE = "chat_template.jinja"


def course_tokenizer_dir() -> Path:
    """The course's default tokenizer folder (``configs/tokenizer/``)."""
    return paths.configs_dir() / "tokenizer"


def _token_text(value) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string, or ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def load_chat_template(folder: str | os.PathLike | None = None) -> tuple[str, dict]:
    """The chat template of a tokenizer folder and the special tokens its template may use.

    Looks for ``chat_template.jinja``, then ``tokenizer_config.json``'s ``chat_template`` (a
    string, or a list of ``{"name", "template"}`` from which "default" is taken).
    Returns ``(template, {"bos_token": ..., "eos_token": ..., ...})``; a FileNotFoundError
    or ValueError names the folder when there is no template.
    """
    folder = course_tokenizer_dir() if folder is None else Path(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    tokens = {
        key: _token_text(config.get(key))
        for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        if _token_text(config.get(key)) is not None
    }
    tokens["additional_special_tokens"] = [_token_text(t) for t in config.get("additional_special_tokens", [])]
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(encoding="utf-8"), tokens
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not folder.is_dir():
        raise FileNotFoundError(f"apply_chat_template: no folder {folder}")
    if not isinstance(template, str) or not template:
        raise ValueError(
            f"apply_chat_template: {folder} has no chat template (no {TEMPLATE_FILE}, no 'chat_template' in "
            "tokenizer_config.json); this model was probably not trained to chat: give it plain text"
        )
    return template, tokens


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True, **variables) -> str:
    """Render a Jinja chat ``template`` for ``messages`` as ``transformers`` does (sandboxed)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


def check_messages(messages) -> list[dict]:
    """``messages`` as a list of ``{"role": str, "content": str}``, or a ValueError naming the bad one."""
    if isinstance(messages, (str, dict)) or not hasattr(messages, "__iter__"):
        raise ValueError(f"apply_chat_template: messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    messages = list(messages)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"apply_chat_template: message {i} needs a 'role' and a 'content' string, got {m!r}")
    return messages


def apply_chat_template(
    messages: list[dict], add_generation_prompt: bool = True, folder: str | os.PathLike | None = None
) -> str:
    """The text of a conversation in the chat format of ``folder`` (default: the course's tokenizer).

    Args:
        messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.
        add_generation_prompt: end with the opening of an assistant message, so that a model
            continues with the reply.
        folder: a tokenizer or model folder with ``chat_template.jinja`` or a
            ``tokenizer_config.json`` holding a ``chat_template`` (a downloaded HF model).
    Returns:
        the text; encode it with special tokens parsed (``tok.encode(text)``) so that the
        markers (``<|im_start|>``) become their ids.
    """
    messages = check_messages(messages)
    template, tokens = load_chat_template(folder)
    return render_chat_template(template, messages, add_generation_prompt, **tokens)

"""``llm-course chat --model PATH``: talk with a model, its reply printed while it is generated.

    llm-course chat --model runs/sft/model                    # a fine-tuned model folder
    llm-course chat --model runs/dpo/model --greedy --system "Answer briefly."
    printf 'Sort the list: 3 1 2\\n/exit\\n' | llm-course chat --model runs/sft/model --greedy

A chat is a loop over :func:`chat_turn`:

1. the conversation so far (``[{"role": "system" | "user" | "assistant", "content": ...}]``)
   is rendered with the model's chat template, ending with the generation prompt
   ``<|im_start|>assistant\\n``;
2. ``generate`` prefills that text into the KV cache, then decodes the reply one token
   at a time from the cache, and a :class:`~llm_course.generation.streaming.TextStreamer`
   prints each piece as it comes;
3. the reply ends at ``<|im_end|>`` (the token the model learned to close its turn with)
   and joins the conversation, which the next turn renders again.

Each turn prefills the whole conversation again: simple, and cheap next to decoding for
the short contexts of the course's models (keeping the cache across turns would save
that prefill). When the conversation no longer fits in the model's context, the oldest
messages are left out (the system message stays) and a note says so.

Commands: ``/reset`` forgets the conversation (the system message stays), ``/system TEXT``
sets the system message (``/system`` alone removes it), ``/exit`` (or Ctrl-D) ends.
Input is read line by line from stdin, so a script can pipe a conversation in.

From a notebook cell, the same without the loop::

    from llm_course.generation.chat_cli import ChatSession, chat_turn
    chat = ChatSession(model, tokenizer, greedy=True)
    chat.send("Sort the list: 3 1 2")          # prints the reply as it comes, returns it
    reply = chat_turn(model, tokenizer, [{"role": "user", "content": "hi"}], stream=False)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable

import torch

from llm_course.generation.generate import generate
from llm_course.generation.loading import DTYPES
from llm_course.generation.streaming import TextStreamer

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /exit"


def _note(message: str) -> None:
    print(f"({message})", file=sys.stderr, flush=True)


def chat_stop_ids(tokenizer, eos_token_id: int | list[int] | None = None) -> list[int]:
    """The ids that end a reply: ``<|im_end|>``, ``<|endoftext|>`` and ``eos_token_id``, those that exist."""
    ids = [tokenizer.token_to_id(t) for t in STOP_TOKENS]
    ids += [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    return list(dict.fromkeys(i for i in ids if i is not None))


def fit_messages(tokenizer, messages: list[dict], room: int | None) -> tuple[list[dict], list[int]]:
    """The most recent messages whose rendered prompt is at most ``room`` tokens, and that prompt's ids.

    The oldest messages go first; a leading system message stays. A ValueError when even the
    last message alone does not fit.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system) :]
    while True:
        kept = system + rest
        ids = tokenizer.encode(tokenizer.apply_chat_template(kept, add_generation_prompt=True))
        if room is None or len(ids) <= room:
            return kept, ids
        if len(rest) <= 1:
            raise ValueError(f"chat: the last message alone is {len(ids)} tokens with the template, more than the "
                             f"{room} the model's context leaves for it; write a shorter one or lower max_new_tokens")  # fmt: skip
        rest = rest[1:]


def chat_turn(
    model,
    tokenizer,
    messages: list[dict],
    *,
    max_new_tokens: int = 128,
    greedy: bool = False,
    temperature: float = 0.7,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stream: bool = True,
    print_fn: Callable[[str], object] | None = None,
    eos_token_id: int | list[int] | None = None,
    device=None,
) -> str:
    """The model's reply to a conversation (``messages`` is not changed); printed while it comes when ``stream``.

    Args:
        model: a course causal LM (on ``device``, default: where its parameters are).
        tokenizer: with ``encode``, ``decode``, ``token_to_id`` and ``apply_chat_template``
            (the course tokenizer, or ``load_for_generation(...).tokenizer``).
        messages: ``[{"role": ..., "content": ...}, ...]``, the last one usually the user's.
        greedy: the most likely token every time; else sampling with ``temperature``,
            ``top_k``, ``top_p`` (``seed`` makes it reproducible).
        stream: print each piece of the reply as it is generated (``print_fn``, default stdout).
        eos_token_id: more ids that end the reply, besides ``<|im_end|>`` and ``<|endoftext|>``.
    Returns:
        the reply's text, without the token that ended it.
    """
    if device is None:
        device = next(model.parameters()).device
    stops = chat_stop_ids(tokenizer, eos_token_id)
    if not stops:
        raise ValueError("chat: the tokenizer has no <|im_end|> or <|endoftext|>, and no eos_token_id was given: "
                         "nothing would end a reply")  # fmt: skip
    block_size = getattr(model.config, "block_size", None)
    room = None if block_size is None else block_size - max(1, min(max_new_tokens, block_size // 2))
    kept, ids = fit_messages(tokenizer, messages, room)
    if len(kept) < len(messages):
        _note(f"the oldest {len(messages) - len(kept)} messages no longer fit in the model's context of {block_size} tokens: left out")
    n = max_new_tokens if block_size is None else min(max_new_tokens, block_size - len(ids))
    streamer = TextStreamer(tokenizer, print_fn=print_fn) if stream else None
    out = generate(
        model, torch.tensor([ids], dtype=torch.long, device=device),
        max_new_tokens=n, do_sample=not greedy, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, eos_token_id=stops, seed=seed, streamer=streamer,
    )  # (1, T + n)  # fmt: skip
    new = out[0, len(ids) :].tolist()
    cut = next((k for k, t in enumerate(new) if t in stops), len(new))  # the reply ends before its stop token
    return tokenizer.decode(new[:cut], skip_special_tokens=True)


class ChatSession:
    """A conversation that remembers itself: ``send(text)`` adds the user's message and the reply.

    ``messages`` is the conversation; ``reset()`` forgets it (the system message stays);
    ``set_system(text)`` sets (or with "" removes) the system message. Keyword arguments
    are :func:`chat_turn`'s; with a ``seed``, turn k samples with ``seed + k`` (reproducible,
    yet not the same draws every turn).
    """

    def __init__(self, model, tokenizer, system: str | None = None, **turn_kwargs):
        self.model, self.tokenizer, self.turn_kwargs = model, tokenizer, turn_kwargs
        self.system = system or ""
        self.messages: list[dict] = []
        self.turns = 0
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def set_system(self, text: str) -> None:
        self.system = text.strip()
        rest = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": self.system}] if self.system else []) + rest

    def send(self, text: str) -> str:
        """Add ``text`` as the user's message, generate the reply (printed if streaming), keep and return it."""
        kwargs = dict(self.turn_kwargs)
        if kwargs.get("seed") is not None:
            kwargs["seed"] = kwargs["seed"] + self.turns
        self.messages.append({"role": "user", "content": text})
        try:
            reply = chat_turn(self.model, self.tokenizer, self.messages, **kwargs)
        except ValueError:
            self.messages.pop()  # the message could not be answered: it does not stay
            raise
        self.messages.append({"role": "assistant", "content": reply})
        self.turns += 1
        return reply


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder with a chat template (a fine-tuned model's runs/<name>/model)")
    p.add_argument("--system", default=None, help="a system message to start with")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="the longest reply (default 128)")
    p.add_argument("--temperature", type=float, default=0.7, help="> 0; 0 means --greedy (default 0.7)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="sample among the most likely tokens of total mass P")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="> 1 discourages repeating tokens")
    p.add_argument("--greedy", action="store_true", help="always the most likely token (no sampling)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--backend", choices=["torch", "triton", "exercises"], default=None, help="the ops' implementation (default: torch)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the GPU if there is one)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float32 on the CPU, the checkpoint's own on a GPU")


def _read_line(interactive: bool) -> str | None:
    """The next line of input without its newline; None at the end of the input."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def run(args: argparse.Namespace) -> int:
    from llm_course.backends.registry import use_backend
    from llm_course.generation.loading import device_and_dtype, load_for_generation, warn

    device, dtype = device_and_dtype(args.device, args.dtype)
    try:
        loaded = load_for_generation(args.model, device=device, dtype=dtype, seed=args.seed or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"llm-course chat: {e}", file=sys.stderr)
        return 2
    if loaded.random_weights:
        warn(loaded.source)
    if not loaded.tokenizer.has_chat_template():
        print(f"llm-course chat: the tokenizer in {loaded.tokenizer.folder} has no chat template: this model was not "
              "fine-tuned to chat (use llm-course generate)", file=sys.stderr)  # fmt: skip
        return 2
    greedy = args.greedy or args.temperature == 0
    session = ChatSession(
        loaded.model, loaded.tokenizer, system=args.system, max_new_tokens=args.max_new_tokens, greedy=greedy,
        temperature=args.temperature if not greedy else 1.0, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, eos_token_id=list(loaded.eos_token_id), device=device,
    )  # fmt: skip
    interactive = sys.stdin.isatty()
    _note(f"chatting with {args.model} on {device}; {HELP}")
    with use_backend(args.backend) if args.backend else contextlib.nullcontext():
        while (line := _read_line(interactive)) is not None:
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                session.reset()
                _note("conversation forgotten")
            elif text == "/system" or text.startswith("/system "):
                session.set_system(text[len("/system") :])
                _note(f"system message: {session.system!r}" if session.system else "no system message")
            elif text.startswith("/"):
                _note(f"unknown command {text.split()[0]}; {HELP}")
            else:
                try:
                    session.send(text)
                except ValueError as e:
                    _note(str(e))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

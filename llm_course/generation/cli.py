"""``llm-course generate``: text from a model, printed as it is generated.

    llm-course generate --model gpt2-tiny --prompt "def main():"          # random weights: runs anywhere
    llm-course generate --model gpt2 --prompt "The meaning of life is" --top-p 0.9 --seed 0
    llm-course generate --model qwen2-0.5b --chat --prompt "Name three colours." --greedy
    llm-course generate --model checkpoints/my_run --prompt "..." --backend triton

``--model`` is a model folder, a downloaded model's name or a model config
(:mod:`llm_course.generation.loading`). Sampling by default (``--temperature``,
``--top-k``, ``--top-p``); ``--greedy`` (or ``--temperature 0``) takes the most likely
token every time. ``--chat`` wraps the prompt in the model's chat template as a user
message and prints only the reply.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from llm_course.generation.loading import DTYPES



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder, a downloaded model (gpt2, qwen2-0.5b), or a config (gpt2-tiny)")
    p.add_argument("--prompt", required=True, help="the text to continue (with --chat: the user's message)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    p.add_argument("--temperature", type=float, default=1.0, help="> 0; 0 means --greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="sample among the most likely tokens of total mass P")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="> 1 discourages repeating tokens")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--greedy", action="store_true", help="always the most likely token (no sampling)")
    p.add_argument("--chat", action="store_true", help="format the prompt with the chat template; print the reply only")
    p.add_argument("--backend", choices=["torch", "triton", "exercises"], default=None, help="the ops' implementation (default: $LLM_COURSE_BACKEND, else torch)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the GPU if there is one)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: float32 on the CPU, the checkpoint's own on a GPU")  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow; for comparison)")


def run(args: argparse.Namespace) -> int:
    from llm_course.backends.registry import use_backend
    from llm_course.generation.generate import generate
    from llm_course.generation.loading import device_and_dtype, load_for_generation, warn
    from llm_course.generation.streaming import TextStreamer

    device, dtype = device_and_dtype(args.device, args.dtype)
    try:
        loaded = load_for_generation(args.model, device=device, dtype=dtype, seed=args.seed or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"llm-course generate: {e}")
        return 2
    if loaded.random_weights:
        warn(loaded.source)
    tok = loaded.tokenizer
    eos = list(loaded.eos_token_id)
    if args.chat:
        if not tok.has_chat_template():
            print(f"llm-course generate: --chat: the tokenizer in {tok.folder} has no chat template; drop --chat")
            return 2
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        im_end = tok.token_to_id("<|im_end|>")  # ChatML ends each message with it
        eos += [im_end] if im_end is not None and im_end not in eos else []
    else:
        text = args.prompt
        print(text, end="", flush=True)
    ids = tok.encode(text)
    if not ids:
        print("llm-course generate: the prompt is empty: give some text to continue")
        return 2
    greedy = args.greedy or args.temperature == 0
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    block_size = getattr(loaded.model.config, "block_size", None)
    max_new = args.max_new_tokens if block_size is None else max(0, min(args.max_new_tokens, block_size - len(ids)))
    if max_new < args.max_new_tokens:
        warn(f"the model's context is {block_size} tokens: generating {max_new} tokens, not {args.max_new_tokens}")
    streamer = TextStreamer(tok, skip_special_tokens=True)
    start = time.perf_counter()
    with use_backend(args.backend) if args.backend else contextlib.nullcontext():
        out = generate(
            loaded.model, input_ids,
            max_new_tokens=max_new, do_sample=not greedy, temperature=args.temperature if not greedy else 1.0,
            top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
            eos_token_id=eos or None, seed=args.seed, streamer=streamer, use_cache=not args.no_cache,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    n = out.shape[1] - input_ids.shape[1]
    speed = f"{n} tokens in {seconds:.2f} s ({n / max(seconds, 1e-9):.1f} tokens/s) on {device}"
    print(f"[{speed}]", file=sys.stderr, flush=True)  # stdout holds only the text
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))

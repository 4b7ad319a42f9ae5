"""Autoregressive generation: prefill the prompt, then one token per step from a static KV cache.

    tokens = generate(model, input_ids, attention_mask, max_new_tokens=20)          # greedy
    tokens = generate(model, ids, mask, do_sample=True, top_p=0.9, seed=0)          # reproducible sampling

A language model scores the *next* token of every position. Generating text is a loop:

1. **prefill** -- run the whole prompt (B, T) once; keep each layer's keys and values in
   the KV cache (:func:`prefill`) and the logits of the last position.
2. **decode** -- choose a token from those logits (:mod:`llm_course.generation.sampling`),
   append it, and run the model on that one token (B, 1) only: its query attends to the
   cached keys and values, and its own key and value are written into the cache
   (:func:`decode_step`). Repeat.

Without a cache (``use_cache=False``) every step recomputes the whole sequence: the same
tokens (the tests check it), with T + n positions of work per step instead of 1.

**A batch of prompts of different lengths** is padded on the *left*
(``pad_batch(..., padding_side="left")``): every row's last position is then a real
token, and the new tokens of all rows sit in the same column. ``attention_mask`` (B, T)
is 1 on real tokens; padding positions are never attended to, and positions count only
real tokens (``cumsum(mask) - 1``), so a padded row gives the same tokens as the same
prompt alone.

**Stopping**: a row stops after it produces an EOS token (``eos_token_id``, an int or a
list) or once its new text contains a stop string (``stop_strings``, with a
``tokenizer``); its later columns hold ``pad_token_id`` (default: the first EOS id, else 0). The
loop ends when every row has stopped or after ``max_new_tokens`` steps; the result is
(B, T + n), the prompt followed by the n columns generated.

:func:`decode_step` does only device work (no ``.item()``, no Python branch on a tensor's
value), so a CUDA graph can capture it (``llm_course.generation.cuda_graph``).
"""

from __future__ import annotations

import torch

from llm_course.generation.sampling import apply_repetition_penalty, sample_next
from llm_course.generation.stopping import StopStrings, eos_hits, eos_ids


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache) -> torch.Tensor:
    """Run the prompt (B, T) through ``model``, filling ``cache``; returns the last position's logits (B, V).

    The cache records which slots are left padding (``attention_mask`` False) and gives
    each token its position: the number of real tokens before it.
    """
    logits = model(input_ids, attention_mask=attention_mask, kv_cache=cache)  # (B, T, V)
    return logits[:, -1, :]


def decode_step(model, cache, token: torch.Tensor) -> torch.Tensor:
    """One step: ``token`` (B, 1) -> logits of the token after it (B, V).

    The token's key and value are written into the next slot of ``cache``; its query
    attends to everything cached. Its position comes from the cache too (filled slots
    minus the row's left padding, which the cache remembers from the prefill), on the
    device. Device work only: capturable in a CUDA graph with a fixed ``token`` buffer
    (after a replay, ``cache.advance_host()``).
    """
    logits = model(token, kv_cache=cache)  # (B, 1, V)
    return logits[:, -1, :]


def forward_last(model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """No cache: the whole sequence (B, L) with its mask -> the last position's logits (B, V)."""
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L), real tokens only
    return model(tokens, position_ids=position_ids, attention_mask=mask)[:, -1, :]


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | list[str] | None = None,
    tokenizer=None,
    seed: int | None = None,
    streamer=None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens after each row of ``input_ids``.

    Args:
        model: a course causal LM (``GPT2LMHeadModel``, ``Qwen2ForCausalLM``): ``model(ids,
            position_ids=, attention_mask=, kv_cache=) -> logits (B, T, V)`` and
            ``model.new_kv_cache(batch_size, max_len)``.
        input_ids: (B, T) long, the prompts, left-padded.
        attention_mask: (B, T), 1 / True on real tokens (default: all real).
        do_sample: False: greedy (the most likely token). True: sample after
            ``temperature``, ``top_k``, ``top_p`` (see ``sampling``). Unlike ``transformers``,
            whose default ``top_k`` is 50, None means no top-k.
        repetition_penalty: > 1 makes tokens already in the row (prompt included, padding
            excluded) less likely; applied before greedy or sampling, as in ``transformers``.
        eos_token_id, pad_token_id, stop_strings, tokenizer: when a row stops and what
            fills it afterwards (see the module docstring).
        seed: the seed of a ``torch.Generator`` for the draws: the same seed gives the same tokens.
        streamer: called after each step with that step's tokens (B,) (the pad token for
            rows that have stopped); a :class:`~llm_course.generation.streaming.TextStreamer`
            prints the text as it comes. Its ``end()``, if any, is called at the end.
        use_cache: False recomputes the whole sequence at every step (slow, for comparison).
    Returns:
        (B, T + n) long: the prompts followed by n <= max_new_tokens generated columns.
    """
    input_ids, attention_mask = _check_prompt(model, input_ids, attention_mask, max_new_tokens)
    B, T = input_ids.shape
    N = max_new_tokens
    device = input_ids.device
    eos = eos_ids(eos_token_id, device)  # (E,) or None
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos is not None else 0)
    stops = StopStrings(stop_strings, tokenizer) if stop_strings else None
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    tokens = torch.full((B, T + N), pad, dtype=torch.long, device=device)  # the prompts, then the new tokens
    tokens[:, :T] = input_ids
    mask = torch.ones(B, T + N, dtype=torch.bool, device=device)  # False on the left padding only
    mask[:, :T] = attention_mask
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # (B,) rows that have stopped

    was_training = model.training
    model.eval()  # no dropout while generating
    try:
        # 1. prefill: the whole prompt at once
        if use_cache:
            cache = model.new_kv_cache(B, T + N, device=device)
            logits = prefill(model, input_ids, attention_mask, cache)  # (B, V)
        else:
            logits = forward_last(model, input_ids, attention_mask)  # (B, V)

        # 2. decode: choose a token, append it, run the model on it
        n = 0
        for step in range(N):
            length = T + step  # tokens so far
            logits = logits.float()
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, tokens[:, :length], repetition_penalty, mask[:, :length])
            token = sample_next(
                logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )  # (B,)  # fmt: skip
            token = torch.where(finished, torch.full_like(token, pad), token)  # stopped rows get padding
            tokens[:, length] = token
            n = step + 1
            if streamer is not None:
                streamer(token)
            finished |= eos_hits(token, eos)
            if stops is not None:
                finished |= stops.hits(tokens[:, T : length + 1], finished)
            if n == N or bool(finished.all()):
                break  # no forward for a token that would not be used
            if use_cache:
                logits = decode_step(model, cache, token[:, None])  # (B, V)
            else:
                logits = forward_last(model, tokens[:, : length + 1], mask[:, : length + 1])  # (B, V)
    finally:
        model.train(was_training)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return tokens[:, : T + n]


def _check_prompt(model, input_ids, attention_mask, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt as (B, T) long and its mask as (B, T) bool, or a ValueError that says what is wrong."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        what = f"shape {tuple(input_ids.shape)}, {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be a (B, T) integer tensor, got {what}")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"generate: input_ids of shape {(B, T)} holds no prompt; every row needs at least one token")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        what = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"generate: attention_mask must have the shape of input_ids {(B, T)}, got {what}")
    attention_mask = attention_mask.to(device=input_ids.device).bool()
    if not bool(attention_mask[:, -1].all()):
        rows = (~attention_mask[:, -1]).nonzero().flatten().tolist()
        raise ValueError(
            f"generate: rows {rows} end with padding; pad prompts on the left "
            "(pad_batch(..., padding_side='left')) so that every row's last position is a real token"
        )
    if bool((attention_mask[:, :-1] & ~attention_mask[:, 1:]).any()):
        raise ValueError("generate: attention_mask has padding between real tokens; only left padding is supported")
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and bool(((input_ids < 0) | (input_ids >= vocab_size)).any()):
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)][0].item()
        raise ValueError(f"generate: input_ids holds token id {bad}, outside the model's vocabulary 0..{vocab_size - 1}")
    block_size = getattr(model.config, "block_size", None)
    if block_size is not None and T + max_new_tokens > block_size:
        raise ValueError(
            f"generate: a prompt of {T} tokens plus max_new_tokens={max_new_tokens} is {T + max_new_tokens} positions, "
            f"more than the model's block_size={block_size}; shorten the prompt or ask for fewer tokens"
        )
    return input_ids.long(), attention_mask

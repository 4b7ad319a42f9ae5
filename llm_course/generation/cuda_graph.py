"""A decode step captured in a CUDA graph: one launch per token instead of hundreds.

A decode step of a 24-layer model is a few hundred small kernels (norms, three
projections, RoPE, attention, the MLP, the residual adds, per layer). Run eagerly, the
host pays for each one: Python, the backend switch, the input checks, the launch itself,
a few microseconds to tens of microseconds apiece. At batch 1 the GPU finishes most of
these kernels faster than the host can queue the next one, so the GPU waits: the step
takes as long as the *host* needs, not the GPU.

A **CUDA graph** records the kernels of one step, with their arguments (the addresses of
their tensors), once; ``graph.replay()`` then launches all of them with one call. For that
the step must be the same every time:

* **the same tensors**: the input token goes into a *static* buffer (``copy_``), the
  output logits come out in a static buffer (overwritten by the next replay), and the
  KV cache is allocated once (``model.new_kv_cache``) and written in place;
* **the same shapes**: the decode step attends over the *whole* cache buffer and
  ``ops.decode_attention`` is told by ``cache.cache_seqlens``, a device tensor, how many
  slots are filled; the slot to write and the new token's position are computed from it
  on the device, and the step itself advances it (``llm_course.models.kv_cache``);
* **no host synchronisation**: nothing in the step reads a value back (``.item()``,
  ``int(t)``, ``if t.any():``): during the capture nothing runs, so there is no value to
  read, and a replay does not run Python at all.

What stays on the host is bookkeeping that Python needs for *eager* code (the cache's
``length``): after each replay :class:`GraphedDecoder` advances it with
``cache.advance_host()``.

The capture follows PyTorch's recipe: warm up on a side stream (Triton compiles and
autotunes its kernels, cuBLAS creates its handles: none of that may happen during a
capture), then capture one step under ``torch.cuda.graph``. The warm-up steps really run,
so they would advance the cache: :class:`GraphedDecoder` saves the cache's counters
before and restores them after (the keys written at the next slot are garbage that the
real step overwrites before reading).

Usage::

    dec = GraphedDecoder(model, batch_size=1, max_len=1024)      # mode "auto": a graph on a GPU
    logits = dec.prefill(input_ids, attention_mask)              # (B, V), eager: the prompt's shape varies
    for _ in range(n):
        token = logits.argmax(-1, keepdim=True)                  # (B, 1)
        logits = dec.step(token)                                 # (B, V): one replay

or :func:`greedy_decode` for that loop. ``mode="compile"`` gives the same step to
``torch.compile(mode="reduce-overhead")`` instead, which also fuses elementwise work and
replays CUDA graphs of its own; ``mode="eager"`` runs the step as plain code (the CPU's
only choice). ``backend`` picks the ops' backend for the whole step, and ``overrides`` lets
some ops run on another one, e.g. the Triton kernels with cuBLAS matmuls::

    GraphedDecoder(model, 1, 1024, backend="triton", overrides={"linear": "torch"})

``fuse=True`` first stacks the weights of projections that read the same input (Qwen2's
q/k/v and gate/up) so that each group is one matrix product, and queries and keys are
rotated in one launch (``llm_course.models.inference.fuse_projections_``; in place, the
model's parameters and state_dict unchanged): five products per layer become two.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from llm_course.backends.registry import declared_ops, get_backend, implementation, register, use_backend
from llm_course.device import is_gpu

MODES = ("auto", "graph", "compile", "eager")
COMPILED_LENGTH = 1  # the host length torch.compile's code sees (see GraphedDecoder._compiled_step)


@contextlib.contextmanager
def op_backends(base: str, overrides: dict[str, str] | None = None) -> Iterator[None]:
    """Run a block under backend ``base``, except the ops named in ``overrides``, which run under theirs.

    ``op_backends("triton", {"linear": "torch"})``: every op on the Triton kernels but
    ``linear`` on PyTorch's (cuBLAS). The override changes the process-wide table of
    implementations for the length of the block (then puts it back), so keep such
    blocks short and on one thread.
    """
    if base == "exercises" and overrides:
        raise ValueError("op_backends: overrides are not supported on the 'exercises' backend")
    specs = declared_ops()
    saved = []
    try:
        for op, backend in (overrides or {}).items():
            if op not in specs:
                raise KeyError(f"op_backends: unknown op {op!r} in overrides; known ops: {', '.join(sorted(specs))}")
            fn = implementation(op, backend)
            saved.append((op, specs[op].implementations.get(base)))
            register(op, base, fn)
        with use_backend(base):
            yield
    finally:
        for op, old in reversed(saved):
            if old is None:  # the op had no implementation on `base`: take the override's away again
                register(op, base, implementation(op, "torch"))  # (register forgets the resolved override)
                specs[op].implementations.pop(base, None)
            else:
                register(op, base, old)


class GraphedDecoder:
    """Prefill once, then decode one token per call of :meth:`step`, replayed from a CUDA graph.

    ``GraphedDecoder(model, batch_size, max_len, *, mode="auto", backend=None, overrides=None,
    dtype=None, warmup=2, fuse=False)``:

    * ``model``: a course causal LM (``model(ids, attention_mask=, kv_cache=) -> (B, T, V)``,
      ``model.new_kv_cache(batch_size, max_len, dtype=, device=)``), on its device;
    * ``max_len``: the cache's slots, prompt and new tokens together;
    * ``mode``: ``"graph"`` (a hand-captured CUDA graph; needs a GPU), ``"compile"``
      (``torch.compile(mode="reduce-overhead")``; needs a GPU), ``"eager"`` (plain calls),
      ``"auto"`` (graph on a GPU, eager elsewhere);
    * ``backend``, ``overrides``: the ops' backend during the step and prefill (default: the
      backend in force when the decoder is made), see :func:`op_backends`;
    * ``dtype``: the cache's dtype (default: the model's);
    * ``fuse``: fuse the model's projections first (in place, see the module's docstring).

    :meth:`prefill` ``(input_ids (B, T), attention_mask=None) -> (B, V)`` empties the cache,
    runs the prompt eagerly and returns the last position's logits. :meth:`step`
    ``(tokens (B, 1) or (B,)) -> (B, V)`` feeds one token per row and returns the logits of
    the next one. In graph and compile modes the returned tensor is a static buffer that the
    next step overwrites: use it (``argmax``, ``clone``) before calling ``step`` again.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int,
        max_len: int,
        *,
        mode: str = "auto",
        backend: str | None = None,
        overrides: dict[str, str] | None = None,
        dtype: torch.dtype | None = None,
        warmup: int = 2,
        fuse: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"GraphedDecoder: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if model.training:  # dropout would be captured once and replayed: the same "random" mask every step
            raise ValueError("GraphedDecoder: the model is in training mode; call model.eval() first")
        param = next(model.parameters())
        self.device = param.device
        if mode == "auto":
            mode = "graph" if is_gpu(self.device) else "eager"
        if mode in ("graph", "compile") and not (is_gpu(self.device) and torch.cuda.is_available()):
            raise RuntimeError(
                f"GraphedDecoder(mode={mode!r}): CUDA graphs need a CUDA GPU, but the model is on {self.device}. "
                "Move the model to a GPU, or use mode='eager' (mode='auto' picks eager on the CPU)."
            )
        self.model, self.mode, self.batch_size, self.max_len = model, mode, batch_size, max_len
        if fuse:
            from llm_course.models.inference import fuse_projections_

            fuse_projections_(model)
        self.backend = backend or get_backend()
        self.overrides = dict(overrides or {})
        self.warmup = warmup
        self.cache = model.new_kv_cache(batch_size, max_len, dtype=dtype or param.dtype, device=self.device)
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)  # static input (B, 1)
        self._graphs: dict[bool, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # has_padding -> (graph, logits)
        self._compiled, self._warm = None, False
        if mode == "compile":
            self._mark_static()
            self._compiled = torch.compile(self._run_step, mode="reduce-overhead")

    # --- the step itself: plain code, captured or compiled by the modes ---

    def _ops(self):
        return op_backends(self.backend, self.overrides)

    def _run_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step on the cache: tokens (B, 1) -> logits (B, V). Device work only."""
        return self.model(tokens, kv_cache=self.cache)[:, -1]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Empty the cache and run the prompt (B, T) through it: the last position's logits (B, V)."""
        B, T = input_ids.shape
        if B != self.batch_size:
            raise ValueError(f"GraphedDecoder.prefill: input_ids has {B} rows, the decoder was made for "
                             f"batch_size={self.batch_size}")  # fmt: skip
        if T >= self.max_len:
            raise ValueError(f"GraphedDecoder.prefill: a prompt of {T} tokens leaves no slot to decode into "
                             f"(max_len={self.max_len})")  # fmt: skip
        self.cache.reset()
        with self._ops():
            return self.model(input_ids, attention_mask=attention_mask, kv_cache=self.cache)[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, tokens (B, 1) or (B,) -> the logits (B, V) of the next token."""
        if self.cache.length >= self.max_len:
            raise ValueError(f"GraphedDecoder.step: the cache is full ({self.max_len} slots); make the decoder "
                             "with a larger max_len")  # fmt: skip
        if self.cache.length == 0:
            raise RuntimeError("GraphedDecoder.step: call prefill(input_ids) first")
        self.tokens.copy_(tokens.reshape(self.batch_size, 1))
        if self.mode == "eager":
            with self._ops():
                return self._run_step(self.tokens)
        if self.mode == "compile":
            return self._compiled_step()
        padded = self.cache.has_padding  # a prompt with padding needs the step that reads the padding mask
        if padded not in self._graphs:
            self._graphs[padded] = self._capture()
        graph, logits = self._graphs[padded]
        graph.replay()
        self.cache.advance_host(1)  # the replay advanced cache_seqlens on the device; Python's copy too
        return logits

    def _compiled_step(self) -> torch.Tensor:
        """One step through ``torch.compile``: the compiled code must not depend on the host ``length``.

        torch.compile guards on every Python value its code reads: reading ``cache.length``
        (the cache's host bookkeeping: a room check, RoPE's table size) would make it
        recompile at every step. The step computes its slot and positions from the device
        tensors alone, so the compiled code is shown a fixed length (``COMPILED_LENGTH``) and
        the true one is put back, advanced, after the call.
        """
        length = self.cache.length
        with self._ops():
            if not self._warm:  # every op resolved to its implementation before tracing (no graph breaks)
                self._warm_up()
                self._warm = True
            self.cache.length = COMPILED_LENGTH
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs may be overwritten now
            try:
                return self._compiled(self.tokens)
            finally:
                self.cache.length = length + 1

    # --- capturing ---

    def _save(self) -> tuple:
        c = self.cache
        rings = {w: s.clone() for w, s in c._ring_seqlens.items()}
        return c.length, c.cache_seqlens.clone(), rings

    def _restore(self, saved: tuple) -> None:
        c = self.cache
        length, seqlens, rings = saved
        c.length = length
        c.cache_seqlens.copy_(seqlens)
        for w, s in rings.items():
            c._ring_seqlens[w].copy_(s)

    def _warm_up(self) -> None:
        """Run ``warmup`` steps for real, each from the same state, and leave the cache as it was."""
        saved = self._save()
        for _ in range(self.warmup):
            self._run_step(self.tokens)
            self._restore(saved)

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream, then record one step; the cache's counters are left as they were."""
        saved = self._save()
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side), self._ops():
            self._warm_up()  # compiles and autotunes the kernels, creates cuBLAS's handles
        main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with self._ops(), torch.cuda.graph(graph):
            logits = self._run_step(self.tokens)  # recorded, not run: only Python's side effects happened
        self._restore(saved)  # (the host length that the recording advanced)
        return graph, logits

    def _mark_static(self) -> None:
        """Tell torch.compile that the cache's tensors keep their addresses (so its graphs may read them)."""
        c = self.cache
        tensors = [c.cache_seqlens, c.key_padding_mask, c.pad_count, c._slot_ids, self.tokens, *c._ring_seqlens.values()]
        for layer in c.layers:
            tensors += [layer.k, layer.v] + ([layer._mask] if layer._mask is not None else [])
        for m in self.model.modules():  # fused weights are plain tensors, not Parameters: say they stay put too
            for fused in (getattr(m, "fused_qkv", None), getattr(m, "fused_gate_up", None)):
                if fused is not None:
                    tensors += [fused.weight] + ([fused.bias] if fused.bias is not None else [])
        for t in tensors:
            torch._dynamo.mark_static_address(t)


@torch.no_grad()
def greedy_decode(
    decoder: GraphedDecoder, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy generation through ``decoder``: (B, T) -> (B, T + max_new_tokens), no stopping.

    The new tokens are chosen and stored on the device; nothing waits for the host, so
    the host runs ahead and queues replay after replay.
    """
    B, T = input_ids.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, :T] = input_ids
    if max_new_tokens == 0:
        return out
    logits = decoder.prefill(input_ids, attention_mask)  # (B, V)
    for i in range(max_new_tokens):
        token = logits.argmax(dim=-1)  # (B,)
        out[:, T + i] = token
        if i + 1 < max_new_tokens:
            logits = decoder.step(token)
    return out

"""The KV cache: keys and values of past tokens, kept so that each new token costs one step, not a re-run.

Generating token ``t+1`` needs the attention of token ``t`` over all earlier tokens, and
so their keys and values. Recomputing them every step costs O(t) work per step; keeping
them costs memory instead: per layer ``2 * B * Hkv * S * D`` numbers (grouped-query
attention makes Hkv small; that is its point).

**Static: allocated once, written in place.** A cache that grows with ``torch.cat`` (the
tuple ``past_key_value`` of the attention layers) reallocates and copies everything
every step, and its shape changes every step. This one allocates, per layer, buffers of
the largest size it will ever need::

    k[layer], v[layer]        (B, Hkv, max_len, D)    slots 0 .. length-1 are filled
    key_padding_mask          (B, max_len) bool       False where a slot holds left padding
    cache_seqlens             (B,) int32, on the device: how many slots are filled

and each step writes the new keys and values into the next slots with ``index_copy_``
(as gpt-fast's KVCache does). Slots not written yet hold garbage (``torch.empty``: even
NaN); they are never read into an output, because every attention call is told how many
slots are filled.

**Why the length lives twice.** ``length`` is a Python int, for eager code: a prefill of T
tokens attends to ``k[:, :, :length]``, a slice whose size Python must know.
``cache_seqlens`` is the same number on the device. A decode step (one token, T = 1)
uses only device tensors: it writes at slot ``cache_seqlens`` (an index tensor, not a
Python int), computes the new token's position from ``cache_seqlens`` minus the padding
count, and calls ``ops.decode_attention`` over the *whole* buffer with ``cache_seqlens``
telling it which slots count. Nothing in that step reads a value back to the CPU and no
shape depends on the length, so the step can be captured once in a CUDA graph and
replayed for every token while ``cache_seqlens`` advances on the device. (A replayed
graph does not run Python: whoever replays it advances the host ``length`` with
:meth:`KVCache.advance_host`.)

**Left padding.** A batch of prompts of different lengths is padded on the left so that
all rows end together and share one ``length``. The padding slots are marked False in
``key_padding_mask``; ``pad_count`` (B,) counts them, so that a token's position (for
RoPE or GPT-2's position table) is its slot minus the padding before it, as
transformers computes positions from the attention mask.

**Sliding-window layers** (some Qwen2 / Mistral configurations) never look further back
than ``window`` positions. For them, when the window is shorter than ``max_len``, the
cache keeps a *ring* of ``window`` slots: position p goes to slot ``p % window``. When
the ring is full it holds exactly the last ``window`` positions, which are exactly
the keys the newest query may see; the order of keys in a buffer does not matter to
attention (a softmax over a set), so ``decode_attention`` runs over the ring with
``min(cache_seqlens, window)`` filled slots and no window mask. A prefill of several
tokens reads the ring back in position order and appends the new keys.

Usage, by a model::

    cache = model.new_kv_cache(batch_size=2, max_len=256)
    logits = model(prompt_ids, attention_mask=mask, kv_cache=cache)    # prefill: T tokens
    logits = model(next_ids, kv_cache=cache)                           # decode: (B, 1)

Inside ``model.forward``: ``position_ids = cache.begin(T, attention_mask)`` once, then each
attention layer calls ``cache.layers[i]`` (a :class:`LayerKVCache`).
"""

from __future__ import annotations

import torch

from llm_course.models.components.checks import positive_int


class LayerKVCache:
    """The cache of one attention layer: its k and v buffers, and views of the shared state.

    ``k``, ``v`` (B, Hkv, L, D), L = max_len, or ``window`` for a ring. Attention layers use:

    * :meth:`update` (T >= 1 tokens, eager): write the new k, v; return the keys, values and
      padding mask the new queries attend to, the queries being the *last* T of them.
    * :meth:`write` then ``ops.decode_attention(q, cache.k, cache.v, cache.seqlens,
      window=cache.decode_window, key_padding_mask=cache.key_padding_mask)`` (T == 1, no sync).
    """

    def __init__(self, parent: KVCache, window: int | None):
        B, Hkv, D = parent.batch_size, parent.num_kv_heads, parent.head_dim
        self.parent, self.window = parent, window
        self.ring = window is not None and window < parent.max_len
        L = window if self.ring else parent.max_len
        self.k = torch.empty(B, Hkv, L, D, dtype=parent.dtype, device=parent.device)  # (B, Hkv, L, D)
        self.v = torch.empty(B, Hkv, L, D, dtype=parent.dtype, device=parent.device)
        self._mask = torch.ones(B, L, dtype=torch.bool, device=parent.device) if self.ring else None  # (B, W)

    # --- what decode_attention needs (device tensors only) ---

    @property
    def seqlens(self) -> torch.Tensor:
        """(B,) int32: the filled slots of this layer's buffer (capped at the ring's size)."""
        return self.parent._ring_seqlens[self.window] if self.ring else self.parent.cache_seqlens

    @property
    def decode_window(self) -> int | None:
        """The window to pass to decode_attention: None for a ring (it holds only the window)."""
        return None if self.ring else self.window

    @property
    def key_padding_mask(self) -> torch.Tensor | None:
        """(B, L) bool, or None when no slot holds padding (attention can skip the mask)."""
        if not self.parent.has_padding:
            return None
        return self._mask if self.ring else self.parent.key_padding_mask

    # --- writing ---

    def write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the keys and values of this step's T tokens at their slots. k, v (B, Hkv, T, D).

        The slots come from the device (``parent.write_slots``), so this runs inside a
        captured CUDA graph; for a ring only the last ``window`` tokens are kept.
        """
        self.parent._check_step(k, v, self)
        slots = self.parent.write_slots  # (T,) int64 on the device
        if self.ring:
            keep = min(k.shape[2], self.window)  # older tokens of a long chunk would be overwritten anyway
            k, v, slots = k[:, :, -keep:], v[:, :, -keep:], slots[-keep:] % self.window
            self._mask.index_copy_(1, slots, self.parent._new_mask[:, -keep:])
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write k, v (B, Hkv, T, D); return (keys, values, key_padding_mask) for ``ops.attention``.

        Keys (B, Hkv, S, D) end with the T new ones, so ``ops.attention(..., causal=True)``
        aligns the queries with them. Reads the host ``length`` (eager code).
        """
        parent = self.parent
        end = parent.length  # begin() already counted this step's tokens
        if not self.ring:
            self.write(k, v)
            mask = parent.key_padding_mask[:, :end] if parent.has_padding else None
            return self.k[:, :, :end], self.v[:, :, :end], mask
        # A ring: the earlier keys in position order, then the new ones (the window mask of
        # ops.attention then keeps, for each query, the last `window` of them).
        T = k.shape[2]
        before = end - T
        n_old = min(before, self.window)
        old = (torch.arange(before - n_old, before, device=self.k.device) % self.window)  # (n_old,) slots
        k_all = torch.cat((self.k.index_select(2, old), k.to(self.k.dtype)), dim=2)  # (B, Hkv, n_old + T, D)
        v_all = torch.cat((self.v.index_select(2, old), v.to(self.v.dtype)), dim=2)
        mask = None
        if parent.has_padding:
            mask = torch.cat((self._mask.index_select(1, old), parent._new_mask), dim=1)  # (B, n_old + T)
        self.write(k, v)
        return k_all, v_all, mask


class KVCache:
    """A static KV cache for ``n_layer`` attention layers (see the module's docstring).

    ``KVCache(n_layer, batch_size, num_kv_heads, head_dim, max_len, *, windows=None,
    dtype=torch.float32, device=None)``; ``windows`` lists each layer's sliding window (None:
    full attention). Models make one with ``model.new_kv_cache(batch_size, max_len)``.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        windows: list[int | None] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        name = "KVCache"
        self.n_layer = positive_int(name, "n_layer", n_layer)
        self.batch_size = positive_int(name, "batch_size", batch_size)
        self.num_kv_heads = positive_int(name, "num_kv_heads", num_kv_heads)
        self.head_dim = positive_int(name, "head_dim", head_dim)
        self.max_len = positive_int(name, "max_len", max_len)
        windows = [None] * n_layer if windows is None else list(windows)
        if len(windows) != n_layer:
            raise ValueError(f"{name}: windows has {len(windows)} entries for n_layer={n_layer} layers")
        for w in windows:
            if w is not None:
                positive_int(name, "window", w)
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        B = batch_size
        self.cache_seqlens = torch.zeros(B, dtype=torch.int32, device=self.device)  # (B,) filled slots
        self.key_padding_mask = torch.ones(B, max_len, dtype=torch.bool, device=self.device)  # (B, max_len)
        self.pad_count = torch.zeros(B, dtype=torch.int64, device=self.device)  # (B,) padding slots so far
        self._slot_ids = torch.arange(max_len, dtype=torch.int64, device=self.device)  # (max_len,)
        self.write_slots = self._slot_ids[:0]  # (T,): the slots of the current step, set by begin()
        self._new_mask = torch.ones(B, 0, dtype=torch.bool, device=self.device)  # (B, T) of the current step
        self.length = 0  # host copy of cache_seqlens (all rows share it)
        self.has_padding = False  # host: has any slot been marked as padding?
        self.layers = [LayerKVCache(self, w) for w in windows]
        rings = sorted({layer.window for layer in self.layers if layer.ring})
        self._ring_seqlens = {w: torch.zeros(B, dtype=torch.int32, device=self.device) for w in rings}

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def __len__(self) -> int:
        return self.n_layer

    def begin(self, T: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Start a step of T new tokens: reserve their slots, record their padding, return their positions.

        ``attention_mask`` (B, length + T), 1/True for real tokens (all tokens so far, as
        transformers takes it), or None: the new tokens are all real. Returns position_ids
        (B, T) int64: each token's position, not counting padding before it. Without an
        attention_mask this reads only device tensors (a capturable decode step).
        """
        B = self.batch_size
        if self.length + T > self.max_len:
            raise ValueError(f"KVCache: {self.length} slots are filled and this step adds {T}, more than "
                             f"max_len={self.max_len}; make the cache with a larger max_len")  # fmt: skip
        start = self.cache_seqlens[:1].to(torch.int64)  # (1,) on the device
        self.write_slots = start + self._slot_ids[:T]  # (T,)
        if attention_mask is None:
            self._new_mask = torch.ones(B, T, dtype=torch.bool, device=self.device)
            self.key_padding_mask.index_fill_(1, self.write_slots, True)  # whatever an earlier use left there
            position_ids = self.write_slots[None, :] - self.pad_count[:, None]  # (B, T)
        else:
            S = self.length + T
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, S):
                raise ValueError(f"KVCache: attention_mask must be (B, S) = ({B}, {S}) (every token so far, this "
                                 f"step's {T} included), got {tuple(attention_mask.shape)}")  # fmt: skip
            mask = attention_mask.to(device=self.device, dtype=torch.bool)  # (B, S)
            self._new_mask = mask[:, -T:]  # (B, T)
            self.key_padding_mask.index_copy_(1, self.write_slots, self._new_mask)
            self.pad_count += (~self._new_mask).sum(dim=1)
            position_ids = (mask.to(torch.int64).cumsum(dim=1) - 1).clamp(min=0)[:, -T:]  # (B, T)
            capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
            if not self.has_padding:
                self.has_padding = True if capturing else not bool(self._new_mask.all())
        self.cache_seqlens += T
        for w, seqlens in self._ring_seqlens.items():
            torch.clamp(self.cache_seqlens, max=w, out=seqlens)
        self.length += T
        return position_ids

    def advance_host(self, T: int = 1) -> None:
        """After replaying a captured step of T tokens: advance the host ``length`` (the device did its part)."""
        self.length += T

    def snapshot(self) -> tuple:
        """The counters (host and device) that a step advances; :meth:`restore` puts them back.

        For running a step that must leave no trace (a warm-up before a CUDA graph capture):
        the keys it wrote sit in the slot that the next real step overwrites before reading.
        Restore after *each* such step: two steps in a row would write two slots, and in a
        ring the second one may still be inside the window.
        """
        rings = {w: s.clone() for w, s in self._ring_seqlens.items()}
        return self.length, self.has_padding, self.cache_seqlens.clone(), self.pad_count.clone(), rings

    def restore(self, snapshot: tuple) -> None:
        """Put back the counters saved by :meth:`snapshot` (in place: captured graphs keep their tensors)."""
        self.length, self.has_padding, seqlens, pad_count, rings = snapshot
        self.cache_seqlens.copy_(seqlens)
        self.pad_count.copy_(pad_count)
        for w, s in rings.items():
            self._ring_seqlens[w].copy_(s)

    def reset(self) -> None:
        """Empty the cache (the buffers are kept; their contents become garbage nobody reads)."""
        self.cache_seqlens.zero_()
        self.key_padding_mask.fill_(True)
        self.pad_count.zero_()
        for w, seqlens in self._ring_seqlens.items():
            seqlens.zero_()
        for layer in self.layers:
            if layer.ring:
                layer._mask.fill_(True)
        self.length, self.has_padding = 0, False

    def _check_step(self, k: torch.Tensor, v: torch.Tensor, layer: LayerKVCache) -> None:
        B, H, T, D = k.shape
        if (B, H, D) != (self.batch_size, self.num_kv_heads, self.head_dim) or v.shape != k.shape:
            raise ValueError(f"KVCache: k and v must be (B, Hkv, T, D) = ({self.batch_size}, {self.num_kv_heads}, T, "
                             f"{self.head_dim}), got k {tuple(k.shape)}, v {tuple(v.shape)}")  # fmt: skip
        if T != self.write_slots.shape[0]:
            raise ValueError(f"KVCache: this step has {T} tokens but begin() reserved {self.write_slots.shape[0]} "
                             "slots; call cache.begin(T, attention_mask) once per forward, before the layers")  # fmt: skip

    def memory_bytes(self) -> int:
        """Bytes held by the k and v buffers of all layers."""
        return sum(layer.k.numel() * layer.k.element_size() * 2 for layer in self.layers)

    def __repr__(self) -> str:
        rings = sorted(self._ring_seqlens)
        ring = f", ring windows={rings}" if rings else ""
        return (f"KVCache(n_layer={self.n_layer}, batch_size={self.batch_size}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, max_len={self.max_len}, length={self.length}, "
                f"dtype={str(self.dtype).removeprefix('torch.')}{ring})")  # fmt: skip

"""Rotary position embeddings: the cos/sin tables, and how long-context models stretch them.

A head of size D has D/2 rotation frequencies, a geometric series from 1 down to
nearly ``1/base``::

    inv_freq[i] = base ** (-2i / D)            i = 0 .. D/2 - 1

Pair ``i`` of a token at position p is rotated by the angle ``p * inv_freq[i]``.
Fast pairs (small i) turn about once a token; slow pairs take up to ``2*pi*base``
tokens for one turn. :class:`RotaryEmbedding` computes ``cos`` and ``sin`` of all
these angles once, in float32, for positions 0 .. max_position - 1, and hands out
the rows of the positions asked for; ``llm_course.ops.apply_rope`` does the
rotation.

**Scaling: using a model beyond the length it was trained on.** The ``scaling``
argument takes Hugging Face's ``rope_scaling`` dict from a model's config.json
(``{"rope_type": "linear", "factor": 4.0}``; older configs write ``"type"``):

* ``linear`` (position interpolation): every frequency divided by ``factor``,
  so position ``p`` looks like position ``p / factor``.
* ``dynamic`` (dynamic NTK): nothing changes up to ``max_position``; beyond it, for
  a sequence of length L the base grows to
  ``base * (factor * L / max_position - (factor - 1)) ** (D / (D - 2))``, which
  slows the slow pairs a lot and the fast ones hardly at all.
* ``yarn`` (NTK-by-parts): fast pairs (more than ``beta_fast`` turns over the
  original context) keep their frequency, slow pairs (fewer than ``beta_slow``
  turns) are interpolated by ``factor``, a linear ramp in between; and cos and sin
  are multiplied by the attention factor ``0.1 * ln(factor) + 1``, which sharpens
  the softmax a little (Qwen2.5's long-context recipe).
* ``llama3``: Llama 3.1's variant of by-parts: wavelengths longer than
  ``original / low_freq_factor`` divided by ``factor``, shorter than
  ``original / high_freq_factor`` kept, a smooth blend in between.

The formulas follow ``transformers``' ``modeling_rope_utils`` so that converted
checkpoints behave the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_type(scaling: dict | None) -> str:
    """The scaling variant named by a ``rope_scaling`` dict (``"default"`` for None)."""
    if scaling is None:
        return "default"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope scaling {kind!r} is not supported; choose one of {', '.join(ROPE_TYPES)}")
    return kind


def _require(scaling: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise ValueError(f"rope scaling {rope_type(scaling)!r} needs the keys {missing} in its dict, got {scaling}")


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """``base ** (-2i / D)`` for i = 0 .. D/2 - 1, in float32. -> (D/2,)"""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(
    head_dim: int,
    base: float = 10000.0,
    scaling: dict | None = None,
    max_position: int = 2048,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """The D/2 rotation frequencies and the attention factor (cos and sin are multiplied by it).

    ``seq_len`` matters only for ``dynamic``: the length of the sequence being
    processed. Returns (inv_freq (D/2,) float32, attention_factor).
    """
    if head_dim % 2 != 0:
        raise ValueError(f"rotary embeddings need an even head size, got {head_dim}")
    kind = rope_type(scaling)
    inv_freq = default_inv_freq(head_dim, base)  # (D/2,)
    if kind == "default":
        return inv_freq, 1.0

    _require(scaling, "factor")
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0

    if kind == "dynamic":
        L = max(seq_len or 0, max_position)
        new_base = base * ((factor * L / max_position) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return default_inv_freq(head_dim, new_base), 1.0

    if kind == "yarn":
        original = scaling.get("original_max_position_embeddings") or max_position
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
            if mscale and mscale_all_dim:
                attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
            else:
                attention_factor = _yarn_mscale(factor)
        beta_fast = scaling.get("beta_fast") or 32
        beta_slow = scaling.get("beta_slow") or 1

        def pair_with_turns(turns: float) -> float:
            # the (fractional) pair index i that makes `turns` full turns over the original context
            return head_dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

        low, high = pair_with_turns(beta_fast), pair_with_turns(beta_slow)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # (D/2,)
        keep = 1 - ramp  # 1: keep the frequency (fast pairs), 0: interpolate it (slow pairs)
        inv_freq = (inv_freq / factor) * (1 - keep) + inv_freq * keep
        return inv_freq, float(attention_factor)

    # llama3
    _require(scaling, "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    low_f, high_f = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq  # (D/2,) tokens per turn
    scaled = torch.where(wavelen > original / low_f, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_f) / (high_f - low_f)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high_f) & (wavelen <= original / low_f)
    return torch.where(medium, blended, scaled), 1.0


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary embeddings: ``forward(position_ids) -> (cos, sin)``.

    ``RotaryEmbedding(head_dim, max_position, base=10000.0, scaling=None)``:
    ``max_position`` is the model's context length (``max_position_embeddings``),
    ``base`` its ``rope_theta``, ``scaling`` its ``rope_scaling`` dict.

    ``forward(position_ids)`` with position_ids (B, T) or (T,) int returns cos and
    sin of shape (B, T, D) or (T, D), float32 unless ``dtype`` is given, each
    angle written twice (``cat(cos(a), cos(a))``) for the rotate-half pairing.
    The tables are buffers that are not saved in the state dict (checkpoints do
    not hold them); positions past the table extend it.
    """

    def __init__(self, head_dim: int, max_position: int, base: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.max_position, self.base = head_dim, max_position, float(base)
        self.scaling = dict(scaling) if scaling is not None else None
        self.rope_type = rope_type(self.scaling)
        inv_freq, self.attention_scaling = rope_frequencies(head_dim, self.base, self.scaling, max_position)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)
        self.register_buffer("cos_cached", torch.empty(0), persistent=False)  # (L, D)
        self.register_buffer("sin_cached", torch.empty(0), persistent=False)  # (L, D)
        self._build_cache(max_position)

    def _build_cache(self, length: int) -> None:
        """cos and sin of ``p * inv_freq`` for p = 0 .. length - 1, in float32. -> (length, D) each.

        The frequencies are recomputed here in float32 (not read from the buffer, which
        ``model.half()`` may have rounded); for ``dynamic`` they depend on ``length``.
        """
        device = self.cos_cached.device
        seq_len = length if self.rope_type == "dynamic" else None
        inv_freq, _ = rope_frequencies(self.head_dim, self.base, self.scaling, self.max_position, seq_len=seq_len)
        self.inv_freq = inv_freq.to(device)
        pos = torch.arange(length, dtype=torch.float32)  # (L,)
        angles = torch.outer(pos, inv_freq)  # (L, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (L, D): the two features of a pair share an angle
        self.cos_cached = (angles.cos() * self.attention_scaling).to(device)
        self.sin_cached = (angles.sin() * self.attention_scaling).to(device)

    def _ensure(self, length: int) -> None:
        """Make the tables cover positions 0 .. length - 1."""
        cached = self.cos_cached.shape[0]
        if self.cos_cached.dtype != torch.float32:  # the module was cast (model.half()): rebuild in float32
            self._build_cache(max(cached, length))
        elif length > cached:  # longer than ever (for dynamic: a larger base)
            self._build_cache(length)
        elif self.rope_type == "dynamic" and length <= self.max_position < cached:
            self._build_cache(self.max_position)  # back within the trained length: the original base

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for these positions: position_ids (B, T) or (T,) -> (B, T, D) or (T, D) each."""
        if position_ids.dtype.is_floating_point:
            raise TypeError("RotaryEmbedding: position_ids must be integers")
        if position_ids.numel() and int(position_ids.min()) < 0:
            raise ValueError("RotaryEmbedding: position_ids must not be negative")
        self._ensure(int(position_ids.max()) + 1 if position_ids.numel() else 0)
        pos = position_ids.to(self.cos_cached.device)
        cos, sin = self.cos_cached[pos], self.sin_cached[pos]  # (B, T, D) or (T, D)
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_position={self.max_position}, base={self.base:g}, scaling={self.scaling}"

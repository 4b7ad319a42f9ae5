"""Rotary position embeddings: the cos/sin tables, and how long-context models stretch them.

A head of size D has D/2 rotation frequencies, a geometric series from 1 down to
nearly ``1/base``::

    inv_freq[i] = base ** (-2i / D)            i = 0 .. D/2 - 1

Pair ``i`` of a token at position p is rotated by the angle ``p * inv_freq[i]``.
Fast pairs (small i) turn about once a token; slow pairs take up to ``2*pi*base``
tokens for one turn. :class:`RotaryEmbedding` computes ``cos`` and ``sin`` of all
these angles once, in float32, for positions 0 .. max_position_embeddings - 1, and hands out
the rows of the positions asked for; ``llm_course.ops.apply_rope`` does the
rotation.

The arguments carry the names of a Hugging Face config: ``max_position_embeddings``
(the context length), ``rope_theta`` (the ``base`` of the formula above),
``rope_scaling``.

**Which features make a pair.** The tables here are laid out for Hugging Face's
*rotate-half* pairing, feature ``i`` with feature ``i + D/2`` (see
``backends/torch_ops/rope.py``). GPT-J and Meta's original Llama code pair
*adjacent* features ``(2i, 2i+1)`` instead. That is the same rotation up to a
permutation of the features: :func:`deinterleave` moves feature ``2i`` to ``i`` and
``2i+1`` to ``i + D/2``, so adjacent pairs become rotate-half pairs, and
:func:`apply_rope_interleaved` rotates adjacent pairs as
``interleave(ops.apply_rope(deinterleave(x), cos, sin))`` with the same tables and the
same op (and kernel).

**Scaling: using a model beyond the length it was trained on.** The ``rope_scaling``
argument takes Hugging Face's ``rope_scaling`` dict from a model's config.json
(``{"rope_type": "linear", "factor": 4.0}``; older configs write ``"type"``):

* ``linear`` (position interpolation): every frequency divided by ``factor``,
  so position ``p`` looks like position ``p / factor``.
* ``dynamic`` (dynamic NTK): nothing changes up to ``max_position_embeddings``; beyond
  it, for a sequence of length L the base grows to
  ``base * (factor * L / max_position_embeddings - (factor - 1)) ** (D / (D - 2))``, which
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

from llm_course import ops
from llm_course.device import host_can_read
from llm_course.models.components.checks import positive_int

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_type(rope_scaling: dict | None, component: str = "rope_scaling") -> str:
    """The scaling variant named by a ``rope_scaling`` dict (``"default"`` for None)."""
    if rope_scaling is None:
        return "default"
    if not isinstance(rope_scaling, dict):
        raise TypeError(f"{component}: rope_scaling must be a dict or None, got {type(rope_scaling).__name__}")
    kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"{component}: rope scaling {kind!r} is not supported; choose one of {', '.join(ROPE_TYPES)}")
    return kind


def _positive_number(component: str, name: str, value, *, above: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= above:
        raise ValueError(f"{component}: {name}={value!r} must be a finite number > {above:g}")
    return float(value)


def check_rope_arguments(
    component: str, head_dim: int, rope_theta: float, rope_scaling: dict | None, max_position_embeddings: int
) -> str:
    """Refuse what would give NaN or meaningless tables; return the scaling variant.

    ``rope_theta`` must be > 1 (the frequencies ``rope_theta ** (-2i/D)`` fall from 1;
    0 gives NaN and 1 makes every pair turn alike), a scaling ``factor`` > 0.
    """
    positive_int(component, "head_dim", head_dim)
    if head_dim % 2 != 0:
        raise ValueError(f"{component}: head_dim={head_dim} must be even (features are rotated in pairs)")
    positive_int(component, "max_position_embeddings", max_position_embeddings)
    _positive_number(component, "rope_theta", rope_theta, above=1.0)
    kind = rope_type(rope_scaling, component)
    if kind == "default":
        return kind
    missing = [k for k in ("factor",) if k not in rope_scaling]
    if kind == "llama3":
        missing += [k for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings") if k not in rope_scaling]
    if missing:
        raise ValueError(f"{component}: rope scaling {kind!r} needs the keys {missing} in its dict, got {rope_scaling}")
    _positive_number(component, "rope_scaling['factor']", rope_scaling["factor"])
    original = rope_scaling.get("original_max_position_embeddings")
    if original is not None:
        positive_int(component, "rope_scaling['original_max_position_embeddings']", original)
    if kind == "llama3":
        low = _positive_number(component, "rope_scaling['low_freq_factor']", rope_scaling["low_freq_factor"])
        high = _positive_number(component, "rope_scaling['high_freq_factor']", rope_scaling["high_freq_factor"])
        if high <= low:
            raise ValueError(f"{component}: rope_scaling['high_freq_factor']={high:g} must be greater than "
                             f"low_freq_factor={low:g}")  # fmt: skip
    return kind


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """``base ** (-2i / D)`` for i = 0 .. D/2 - 1, in float32. -> (D/2,)"""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(
    head_dim: int,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    max_position_embeddings: int = 2048,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """The D/2 rotation frequencies and the attention factor (cos and sin are multiplied by it).

    ``seq_len`` matters only for ``dynamic``: the length of the sequence being
    processed. Returns (inv_freq (D/2,) float32, attention_factor).
    """
    kind = check_rope_arguments("rope_frequencies", head_dim, rope_theta, rope_scaling, max_position_embeddings)
    base, scaling, max_position = float(rope_theta), rope_scaling, max_position_embeddings
    inv_freq = default_inv_freq(head_dim, base)  # (D/2,)
    if kind == "default":
        return inv_freq, 1.0

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
    low_f, high_f = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq  # (D/2,) tokens per turn
    scaled = torch.where(wavelen > original / low_f, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_f) / (high_f - low_f)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high_f) & (wavelen <= original / low_f)
    return torch.where(medium, blended, scaled), 1.0


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """Adjacent pairs to rotate-half pairs: features (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...).

    Feature 2i goes to i and 2i+1 to i + D/2. (..., D) -> (..., D), a copy.
    """
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


def interleave(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`deinterleave`: feature i goes to 2i and i + D/2 to 2i+1. (..., D) -> (..., D)."""
    half = x.shape[-1] // 2
    return torch.stack((x[..., :half], x[..., half:]), dim=-1).flatten(-2)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent pairs (2i, 2i+1), as GPT-J and Meta's Llama code: pair i turns by the angle of pair i.

    x (B, H, T, D); cos, sin (B, T, D) or (T, D) from :class:`RotaryEmbedding` (the same
    tables as the rotate-half default) -> (B, H, T, D). Runs ``ops.apply_rope`` between
    two permutations of the features, so it works on every backend.
    """
    return interleave(ops.apply_rope(deinterleave(x), cos, sin))


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary embeddings: ``forward(position_ids) -> (cos, sin)``.

    ``RotaryEmbedding(head_dim, max_position_embeddings, rope_theta=10000.0, rope_scaling=None)``:
    the model's head size, context length, ``rope_theta`` and ``rope_scaling`` dict,
    as in its config.

    ``forward(position_ids)`` with position_ids (B, T) or (T,) int returns cos and
    sin of shape (B, T, D) or (T, D), float32 unless ``dtype`` is given, each
    angle written twice (``cat(cos(a), cos(a))``) for the rotate-half pairing
    (for adjacent pairs, see :func:`apply_rope_interleaved`).
    The tables are buffers that are not saved in the state dict (checkpoints do
    not hold them); positions past the table extend it.
    """

    def __init__(
        self, head_dim: int, max_position_embeddings: int, rope_theta: float = 10000.0, rope_scaling: dict | None = None
    ):
        super().__init__()
        self.rope_type = check_rope_arguments("RotaryEmbedding", head_dim, rope_theta, rope_scaling, max_position_embeddings)
        self.head_dim, self.max_position_embeddings, self.rope_theta = head_dim, max_position_embeddings, float(rope_theta)
        self.rope_scaling = dict(rope_scaling) if rope_scaling is not None else None
        inv_freq, self.attention_scaling = self._frequencies()
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)
        self.register_buffer("cos_cached", torch.empty(0), persistent=False)  # (L, D)
        self.register_buffer("sin_cached", torch.empty(0), persistent=False)  # (L, D)
        self._build_cache(max_position_embeddings)

    def _frequencies(self, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        return rope_frequencies(self.head_dim, self.rope_theta, self.rope_scaling, self.max_position_embeddings, seq_len)

    def _build_cache(self, length: int) -> None:
        """cos and sin of ``p * inv_freq`` for p = 0 .. length - 1, in float32. -> (length, D) each.

        The frequencies are recomputed here in float32 (not read from the buffer, which
        ``model.half()`` may have rounded); for ``dynamic`` they depend on ``length``.
        """
        device = self.cos_cached.device
        inv_freq, _ = self._frequencies(seq_len=length if self.rope_type == "dynamic" else None)
        self.inv_freq = inv_freq.to(device)
        pos = torch.arange(length, dtype=torch.float32)  # (L,)
        angles = torch.outer(pos, inv_freq)  # (L, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (L, D): the two features of a pair share an angle
        self.cos_cached = (angles.cos() * self.attention_scaling).to(device)
        self.sin_cached = (angles.sin() * self.attention_scaling).to(device)

    def _ensure(self, length: int) -> None:
        """Make the tables cover positions 0 .. length - 1."""
        cached, trained = self.cos_cached.shape[0], self.max_position_embeddings
        if self.cos_cached.dtype != torch.float32:  # the module was cast (model.half()): rebuild in float32
            self._build_cache(max(cached, length))
        elif length > cached:  # longer than ever (for dynamic: a larger base)
            self._build_cache(length)
        elif self.rope_type == "dynamic" and length <= trained < cached:
            self._build_cache(trained)  # back within the trained length: the original base

    def cover(self, length: int) -> None:
        """Make the tables cover positions 0 .. length - 1, from a host int (no read of the device).

        A model calls this with its sequence length before it looks positions up. While
        torch.compile traces, the tables cannot grow: a length beyond them is an error here,
        not an out-of-range read inside a compiled kernel.
        """
        if torch.compiler.is_compiling():
            if length > self.cos_cached.shape[0]:
                raise ValueError(
                    f"RotaryEmbedding: {length} positions under torch.compile, but the tables cover "
                    f"{self.cos_cached.shape[0]} (max_position_embeddings={self.max_position_embeddings}); "
                    "run the model once without compiling at this length first, or raise block_size"
                )
            return
        self._ensure(length)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for these positions: position_ids (B, T) or (T,) -> (B, T, D) or (T, D) each."""
        if position_ids.dtype.is_floating_point:
            raise TypeError("RotaryEmbedding: position_ids must be integers")
        # While torch.compile traces or a CUDA graph is captured the host cannot read the positions:
        # the tables are used as built, which covers the trained length, max_position_embeddings.
        if host_can_read(position_ids):
            if position_ids.numel() and int(position_ids.min()) < 0:
                raise ValueError("RotaryEmbedding: position_ids must not be negative")
            self._ensure(int(position_ids.max()) + 1 if position_ids.numel() else 0)
        pos = position_ids.to(self.cos_cached.device)
        cos, sin = self.cos_cached[pos], self.sin_cached[pos]  # (B, T, D) or (T, D)
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, max_position_embeddings={self.max_position_embeddings}, "
            f"rope_theta={self.rope_theta:g}, rope_scaling={self.rope_scaling}"
        )

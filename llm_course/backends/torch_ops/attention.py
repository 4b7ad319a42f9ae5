"""Scaled dot-product attention: the PyTorch reference.

    out = softmax(q @ k^T * scale + mask) @ v

Shapes (GQA: several query heads share one key/value head):

* q: (B, Hq, T, D)    -- T queries per head
* k: (B, Hkv, S, D)   -- S keys; Hkv divides Hq
* v: (B, Hkv, S, Dv)
* out: (B, Hq, T, Dv), in q's dtype

Query head ``h`` reads key/value head ``h // G`` with ``G = Hq // Hkv`` (the
group size). Hkv == Hq is ordinary multi-head attention, Hkv == 1 is multi-query
attention. Here the group is a broadcast, never a copy: q is viewed as
(B, Hkv, G, T, D) and k as (B, Hkv, 1, S, D), so K and V are never repeated
``G`` times the way ``repeat_interleave`` would.

Which keys a query sees (all three rules combine with AND):

* ``causal``: query ``i`` sees keys ``j <= i + S - T``. The queries are the *last*
  T positions of the S keys, which is what a KV cache needs (T < S when new
  tokens are appended to a cache); with T == S it is the usual ``j <= i``.
* ``window=w``: query ``i`` sees only keys with ``(i + S - T) - j < w``, the
  last ``w`` positions up to and including its own (sliding-window attention).
* ``key_padding_mask`` (B, S) bool: True where a key is a real token, False where
  it is padding.

A query that sees no key at all gets an output of 0 (not NaN). A key it does
not see never changes its output, even if that key's k or v holds NaN or inf;
a query that sees such a key gets NaN. The scores and the softmax are
computed in float32 (float64 if the inputs are float64).

This is the *naive* algorithm: it writes the whole (T, S) score matrix to
memory and reads it back, which is why it is memory-bound; FlashAttention
(``llm_course/backends/triton_ops/flash_attention.py``) computes the same
numbers tile by tile without ever storing the scores, thanks to the online
softmax at the end of this file (``online_softmax_step``, ``online_softmax``).
"""

from __future__ import annotations

import math

import torch


def build_mask(
    T: int,
    S: int,
    causal: bool = True,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The boolean mask of keys each query may see: True = visible.

    Returns (B, 1, T, S) when ``key_padding_mask`` (B, S) is given, else (1, 1, T, S),
    so that it broadcasts over the heads of a (B, H, T, S) score matrix.
    """
    if key_padding_mask is not None and device is None:
        device = key_padding_mask.device
    i = torch.arange(T, device=device).view(T, 1) + (S - T)  # (T, 1): each query's position among the keys
    j = torch.arange(S, device=device).view(1, S)  # (1, S): each key's position
    mask = torch.ones(T, S, dtype=torch.bool, device=device)  # (T, S)
    if causal:
        mask &= j <= i  # no looking at the future
    if window is not None:
        if window < 1:
            raise ValueError(f"attention: window must be a positive number of keys, got {window}")
        mask &= (i - j) < window  # only the last `window` positions
    mask = mask.view(1, 1, T, S)
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != S:
            raise ValueError(
                f"attention: key_padding_mask must be a bool tensor of shape (B, S={S}), "
                f"got {str(key_padding_mask.dtype).removeprefix('torch.')} {tuple(key_padding_mask.shape)}"
            )
        mask = mask & key_padding_mask.to(device).view(-1, 1, 1, S)  # (B, 1, T, S)
    return mask


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be (B, H, T, D), got shape {tuple(t.shape)}")
    B, Hq, T, D = q.shape
    _, Hkv, S, _ = k.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"attention: batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != D:
        raise ValueError(f"attention: q and k head sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"attention: k and v differ in heads or length: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"attention: the {Hkv} key/value heads must divide the {Hq} query heads")
    return B, Hq, Hkv, T, S, D


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention with grouped-query heads. q (B, Hq, T, D); k (B, Hkv, S, D); v (B, Hkv, S, Dv) -> (B, Hq, T, Dv).

    ``scale`` defaults to ``1 / sqrt(D)``. ``dropout_p`` > 0 drops attention
    probabilities (and rescales the rest by ``1 / (1 - p)``); layers pass it only
    while training.
    """
    B, Hq, Hkv, T, S, D = _check_shapes(q, k, v)
    G = Hq // Hkv  # query heads per key/value head
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # scores and softmax in fp32 at least
    mask = build_mask(T, S, causal, window, key_padding_mask, q.device).unsqueeze(1)  # (B or 1, 1, 1, T, S)

    # Keys a query cannot see must not reach its output, even when they hold NaN or inf
    # (unwritten cache slots, padding): a probability of exactly 0 does not help, since
    # 0 * NaN = NaN inside the products. So the products only see finite numbers, and
    # a query that *does* see a non-finite key or value gets NaN, as it should.
    k_bad = ~torch.isfinite(k).all(dim=-1)  # (B, Hkv, S): keys whose k has a NaN or inf
    v_bad = ~torch.isfinite(v).all(dim=-1)  # (B, Hkv, S): keys whose v has a NaN or inf
    k_fin = torch.where(torch.isfinite(k), k, 0).to(acc)
    v_fin = torch.where(torch.isfinite(v), v, 0).to(acc)

    qg = q.to(acc).view(B, Hkv, G, T, D)  # (B, Hkv, G, T, D): the G query heads that share a kv head
    kg = k_fin.unsqueeze(2)  # (B, Hkv, 1, S, D): broadcast over G, not copied
    vg = v_fin.unsqueeze(2)  # (B, Hkv, 1, S, Dv)

    scores = (qg @ kg.transpose(-1, -2)) * scale  # (B, Hkv, G, T, S)
    scores = scores.masked_fill(k_bad[:, :, None, None, :], float("nan"))  # a query that sees it: NaN
    scores = scores.masked_fill(~mask, float("-inf"))  # a query that cannot: nothing

    # A safe softmax that also handles rows with no visible key: subtract the row max
    # (0 for an all-masked row), exponentiate (masked keys give exp(-inf) = 0) and
    # divide by the row sum, or by 1 where the sum is 0, so such rows are all zeros.
    if S > 0:
        m = scores.amax(dim=-1, keepdim=True).detach()  # (B, Hkv, G, T, 1); softmax does not depend on it
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    else:  # no keys at all (amax of nothing is an error): every query gets 0
        m = scores.new_zeros(*scores.shape[:-1], 1)
    p = torch.exp(scores - m)  # (B, Hkv, G, T, S)
    l = p.sum(dim=-1, keepdim=True)  # (B, Hkv, G, T, 1)
    p = p / torch.where(l > 0, l, torch.ones_like(l))
    if dropout_p > 0.0:
        p = torch.nn.functional.dropout(p, p=dropout_p, training=True)

    out = p @ vg  # (B, Hkv, G, T, Dv)
    sees_bad_v = (mask.to(acc) @ v_bad.to(acc)[:, :, None, :, None]) > 0  # (B, Hkv, 1, T, 1)
    out = out.masked_fill(sees_bad_v, float("nan"))
    return out.reshape(B, Hq, T, v.shape[-1]).to(q.dtype)  # (B, Hq, T, Dv)


def split_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A packed projection (B, T, 3C) = [q | k | v] -> q, k, v, each a (B, H, T, D) view (no copy)."""
    B, T, C3 = qkv.shape
    q, k, v = qkv.unflatten(-1, (3, num_heads, C3 // (3 * num_heads))).unbind(2)  # 3 x (B, T, H, D)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def qkv_attention(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Self-attention from one packed projection: qkv (B, T, 3C) -> (B, T, C), heads merged.

    The same as splitting q, k, v off the projection, :func:`attention`, and merging the
    heads; GPT-2's attention is this. As one op, a kernel can write the three gradients
    straight into one (B, T, 3C) tensor for the projection's backward, where autograd's
    split would concatenate them (a copy of the whole projection's output).
    """
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, num_heads)  # (B, H, T, D) each
    y = attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)  # (B, H, T, D) -> (B, T, C)


# --- The online softmax: the softmax FlashAttention is built on -------------------------------
#
# The softmax of a row needs its max and its sum of exponentials. Both can be
# gathered in one pass over blocks of the row, keeping a running max m and a
# running sum l = sum(exp(x - m)), and rescaling l whenever m grows:
#     m_new = max(m, max(block));  l_new = l * exp(m - m_new) + sum(exp(block - m_new))
# At the end softmax(x) = exp(x - m) / l and logsumexp(x) = m + log(l).


def online_softmax_step(m: torch.Tensor, l: torch.Tensor, x_block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one block into the running max and sum. m, l (...); x_block (..., b) -> (m_new, l_new), each (...)."""
    m_new = torch.maximum(m, x_block.amax(dim=-1))  # (...)
    l_new = l * torch.exp(m - m_new) + torch.exp(x_block - m_new[..., None]).sum(dim=-1)
    return m_new, l_new


def online_softmax(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim, its statistics gathered block by block. x (..., N) -> probs (..., N), lse (...)."""
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)  # (...)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)  # (...)
    for j in range(0, x.shape[-1], block):
        m, l = online_softmax_step(m, l, x[..., j : j + block])
    return torch.exp(x - m[..., None]) / l[..., None], m + torch.log(l)

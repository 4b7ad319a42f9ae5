"""The ops that models call. Each one runs under the backend in force.

    from llm_course import ops
    from llm_course.backends import use_backend

    y = ops.rms_norm(x, weight)            # torch reference (the default)
    with use_backend("triton"):
        y = ops.rms_norm(x, weight)        # the Triton kernel, forward and backward

Models and layers call these functions and never launch a kernel themselves.

Each op is declared here, once, and everything else is derived from it: the
decorated function gives the name, the signature every backend implements and
the docstring; ``@op(...)`` names the implementations (``"module:function"`` in
``llm_course/backends/torch_ops/`` and ``triton_ops/``, imported on first use),
the learner's exercise that the ``"exercises"`` backend runs (``"topic:function"``
in ``exercises/``), and the input check that runs first, whatever the backend
(``llm_course/backends/checks.py``). The bodies below are never run.

A new op: a reference in ``torch_ops/``, a kernel in ``triton_ops/``, a check in
``backends/checks.py``, and a declaration here.
"""

from __future__ import annotations

import torch

from llm_course.backends import checks
from llm_course.backends.registry import op

# --- stage 1 ---------------------------------------------------------------------------------


@op(torch="add:add", triton="add:add", exercise="stage1_kernels/add:add", check=checks.add)
def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise ``x + y`` (same shape)."""


@op(torch="softmax:softmax", triton="softmax:softmax", exercise="stage1_kernels/softmax:softmax", check=checks.softmax)
def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. (..., N) -> (..., N)."""


@op(torch="norms:rms_norm", triton="rmsnorm:rms_norm", exercise="stage1_kernels/rmsnorm:rms_norm", check=checks.rms_norm)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2) + eps) * weight``. x (..., N), weight (N,)."""


@op(torch="norms:layer_norm", triton="layernorm:layer_norm", check=checks.layer_norm)
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension. x (..., N), weight and bias (N,)."""


@op(torch="norms:add_layer_norm", triton="add_norm:add_layer_norm", check=checks.add_layer_norm,
    composite="add_layer_norm")
def add_layer_norm(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual add and the LayerNorm after it, in one pass: ``s = x + h``, ``y = layer_norm(s)``.

    x, h (..., N), weight and bias (N,) -> (s in x's dtype, y in h's dtype).
    """


@op(torch="norms:add_rms_norm", triton="add_norm:add_rms_norm", check=checks.add_rms_norm,
    composite="add_rms_norm")
def add_rms_norm(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual add and the RMSNorm after it, in one pass: ``s = x + h``, ``y = rms_norm(s)``.

    x, h (..., N), weight (N,) -> (s in x's dtype, y in h's dtype).
    """


@op(torch="matmul:matmul", triton="matmul:matmul", exercise="stage1_kernels/matmul:matmul",
    check=checks.matmul, autocast=True)
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix product. a (M, K), b (K, N) -> (M, N), accumulated in float32."""


@op(torch="matmul:linear", triton="linear:linear", check=checks.linear, autocast=True)
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``. x (..., K), weight (N, K) as in nn.Linear, bias (N,) -> (..., N)."""


# --- stage 2 ---------------------------------------------------------------------------------


@op(torch="rope:apply_rope", triton="rope:apply_rope", exercise="stage2_attention/rope:apply_rope", check=checks.apply_rope)
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query or key heads by position. x (B, H, T, D); cos, sin (B, T, D) or (T, D)."""


@op(
    torch="attention:attention",
    triton="flash_attention:attention",
    exercise="stage2_attention/flash_attention:attention",
    check=checks.attention,
)
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
    """Scaled dot-product attention with grouped-query heads.

    q (B, Hq, T, D); k, v (B, Hkv, S, D) with Hkv dividing Hq; -> (B, Hq, T, D).
    ``causal`` masks future keys (query i sees keys <= i + S - T); ``window`` keeps
    only the last ``window`` keys of each query; ``key_padding_mask`` (B, S) is True
    where a key is real and False where it is padding. ``dropout_p`` drops attention
    probabilities (layers pass it only while training). A query that sees no key gives 0.
    """


@op(torch="attention:qkv_attention", triton="qkv_attention:qkv_attention", check=checks.qkv_attention,
    composite="qkv_attention")
def qkv_attention(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Self-attention from a packed projection: ``attention`` on q, k, v split off ``qkv``, heads merged.

    qkv (B, T, 3C) = [q | k | v] (GPT-2's ``c_attn`` output), C = num_heads * D -> (B, T, C).
    The backward returns one packed (B, T, 3C) gradient, with no concatenation.
    ``key_padding_mask`` (B, T) bool, True for real tokens.
    """


@op(
    torch="decode_attention:decode_attention",
    triton="decode_attention:decode_attention",
    exercise="stage3_models/decode_attention:decode_attention",
    check=checks.decode_attention,
)
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step's attention: one query per head against a preallocated KV cache.

    q (B, Hq, 1, D); k_cache, v_cache (B, Hkv, S_max, D) with Hkv dividing Hq;
    cache_seqlens (B,) int32 or int64 on q's device -> (B, Hq, 1, D). Row b sees the
    slots j < cache_seqlens[b]; ``window`` keeps only j >= cache_seqlens[b] - window;
    ``key_padding_mask`` (B, S_max) is True where a slot holds a real token. Unseen
    slots never affect the output (even holding NaN); a row that sees no slot gives 0.
    The lengths are never read on the host, so a decode step can be captured in a CUDA graph.
    """


# --- stage 3: what the models need besides ---------------------------------------------------


@op(torch="embedding:embedding", triton="embedding:embedding", check=checks.embedding)
def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` picked by ``ids`` (a token embedding). ids (...) int64 or int32, weight (V, C) -> (..., C)."""



@op(torch="activations:gelu_tanh", triton="activations:gelu_tanh", check=checks.gelu_tanh)
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation GPT-2 uses (``"gelu_new"``), elementwise. (...) -> (...)."""


@op(torch="activations:silu_mul", triton="activations:silu_mul", check=checks.silu_mul)
def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gating ``silu(gate) * up``, elementwise. gate, up (...) of one shape -> (...)."""


# --- stage 4: the loss -----------------------------------------------------------------------


@op(
    torch="cross_entropy:cross_entropy",
    triton="cross_entropy:cross_entropy",
    exercise="stage4_training/cross_entropy:cross_entropy",
    check=checks.cross_entropy,
)
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (N, V) against class indices targets (N,) -> a float32 scalar.

    ``-log softmax(logits[i])[targets[i]]`` per row; rows whose target is ``ignore_index``
    count for nothing. ``reduction="mean"`` averages over the counted rows (0 when there
    is none, not NaN), ``"sum"`` adds them. Computed in float32 whatever the logits' dtype.
    """


@op(
    torch="cross_entropy:fused_linear_cross_entropy",
    triton="fused_linear_cross_entropy:fused_linear_cross_entropy",
    check=checks.fused_linear_cross_entropy,
)
def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, targets)``: the output layer and the loss in one op.

    hidden (N, C), weight (V, C) as in nn.Linear, targets (N,), bias (V,) or None -> a float32
    scalar. The Triton backend works chunk by chunk of rows and never holds the (N, V) logits.
    """

"""Which kind of work a kernel does: matmul, attention, norms, elementwise, loss, optimizer, ...

A training step launches hundreds of kernels with names like
``sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64...`` or
``void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl...>``.
Grouping them into a few categories answers the first question of any profile:
*what kind of work* takes the time?

Two sources decide, strongest first:

1. **Where it ran** (:func:`categorize`): a kernel launched inside a course op
   (``llm_course.ops.layer_norm``, found through the profiler's ranges, see
   ``annotate.py``) belongs to that op's category, whatever its name: the torch
   reference LayerNorm launches a mean, a subtraction, a square... all of them are
   "norms". A kernel inside ``optimizer.step()`` or the gradient clipping is "optimizer".
2. **Its name** (:func:`classify_kernel`): cuBLAS ``gemm``s are matmuls, ``flash_fwd``
   is attention, ``nccl`` is communication, ``Memcpy HtoD`` is a copy between host
   and device. Unknown names fall to "other".

The CPU works the same way with CPU op names (``aten::mm``, ``aten::native_layer_norm``).
"""

from __future__ import annotations

import re

# In the order the tables print them; "idle" is wall time the device did nothing.
CATEGORIES = ("matmul", "attention", "norms", "elementwise", "loss", "optimizer", "communication", "memcpy", "other",
              "idle")  # fmt: skip

# The course op -> its category (llm_course/ops.py). fused_linear_cross_entropy holds the
# output layer's matmul too: on the Triton backend it cannot be told apart from the loss.
OP_CATEGORY = {
    "linear": "matmul",
    "matmul": "matmul",
    "attention": "attention",
    "qkv_attention": "attention",
    "decode_attention": "attention",
    "layer_norm": "norms",
    "rms_norm": "norms",
    "add_layer_norm": "norms",  # the residual add fused into the norm
    "add_rms_norm": "norms",
    "cross_entropy": "loss",
    "fused_linear_cross_entropy": "loss",
    "softmax": "elementwise",
    "add": "elementwise",
    "gelu_tanh": "elementwise",
    "silu_mul": "elementwise",
    "apply_rope": "elementwise",
    "embedding": "elementwise",
}

# (category, pattern) checked in order, case-insensitive, on the kernel (or CPU op) name.
# Order matters: "multi_tensor_apply" (the optimizer's, and clipping's, fused kernels) comes
# before anything else; attention before matmul (some attention kernels are CUTLASS "fmha").
_RULES: list[tuple[str, str]] = [
    ("communication", r"nccl|c10d::|all_?reduce|reduce_?scatter|all_?gather|all_to_all|broadcast_|gloo"),
    ("memcpy", r"^memcpy|^memset|\bmemcpy\b|\bmemset\b"),
    ("optimizer", r"multi_tensor_apply|fused_?adam|adamw?_|_foreach_|optimizer\.|\bsgd\b|lerp"),
    ("attention", r"flash|fmha|attn|attention|scaled_dot_product|sdpa|_bwd_dkdv|_bwd_dq|_bwd_preprocess|decode_split|"
                  r"decode_combine"),  # fmt: skip
    ("loss", r"cross_?entropy|nll_?loss|log_?softmax|logsumexp"),
    ("norms", r"layer_?norm|rms_?norm|add_norm|group_?norm|batch_?norm"),
    ("matmul", r"gemm|gemv|xmma|wgmma|cutlass|cublas|nvjet|matmul|splitkreduce|aten::(mm|addmm|bmm|baddbmm|linear)$|"
               r"_mm_|linear_kernel"),  # fmt: skip
    ("elementwise", r"elementwise|vectorized|unrolled|reduce_kernel|reduction|gelu|silu|tanh|sigmoid|rope|embedding|"
                    r"index|gather|scatter|softmax|add_kernel|copy|fill|cat_|transpose|^aten::|^void at::native|triton"),  # fmt: skip
]
_COMPILED = [(cat, re.compile(pat, re.IGNORECASE)) for cat, pat in _RULES]


def classify_kernel(name: str) -> str:
    """The category of a kernel or CPU op from its name alone; "other" when no rule matches.

    >>> classify_kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n")
    'matmul'
    >>> classify_kernel("void at::native::vectorized_elementwise_kernel<4, ...>")
    'elementwise'
    """
    for category, pattern in _COMPILED:
        if pattern.search(name):
            return category
    return "other"


def categorize(name: str, op: str | None = None, region: str | None = None) -> str:
    """The category of one kernel call: by name for copies and communication, then by where it ran.

    ``op`` is the course op it ran in (``"layer_norm"``), ``region`` the part of the step
    (``"optimizer"`` for ``optimizer.step()`` and gradient clipping); either may be None.
    """
    by_name = classify_kernel(name)
    if by_name in ("communication", "memcpy"):
        return by_name
    if region == "optimizer":
        return "optimizer"
    if op is not None and op in OP_CATEGORY:
        return OP_CATEGORY[op]
    return by_name

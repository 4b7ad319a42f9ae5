"""The Triton backend under ``torch.compile``: each op is a custom op the graph calls whole.

``torch.compile`` cannot trace into a kernel launch, so under compile every Triton op of the
models is a PyTorch custom op (``llm_course/backends/triton_ops/custom_ops.py``). These tests
check each custom op with ``torch.library.opcheck`` (its declared output shapes and strides
match what it returns, its schema, its backward registration), and then whole models compiled
with ``fullgraph=True`` (no graph break anywhere: every op is in the graph) against eager, loss
and gradients. ``aot_eager`` traces exactly as inductor does (fake tensors, the joint forward and
backward graph) without generating code, so it runs anywhere; the GPU runs inductor for real
(``llm-course bench train --paths triton.compile``).
"""

from __future__ import annotations

import functools

import pytest
import torch

from llm_course.backends import use_backend
from llm_course.backends.triton_ops import custom_ops
from llm_course.device import get_device
from llm_course.models import AutoModelForCausalLM
from llm_course.training.loss import fused_loss_fn, loss_fn

DEV = get_device()
DTYPE = torch.float32 if DEV.type == "cpu" else torch.bfloat16


def _r(*shape, grad=True, dtype=None):
    t = torch.randn(*shape, device=DEV, dtype=dtype or DTYPE)
    return t.requires_grad_(grad)


def _cases():
    """(name, op, args): each custom op on small inputs, some of them not contiguous."""
    q = _r(2, 5, 3, 16, grad=False).transpose(1, 2).requires_grad_()  # (B, H, T, D) as a model makes it
    k = _r(2, 5, 3, 16, grad=False).transpose(1, 2).requires_grad_()
    v = _r(2, 5, 3, 16, grad=False).transpose(1, 2).requires_grad_()
    cos, sin = torch.randn(5, 16, device=DEV), torch.randn(5, 16, device=DEV)
    ids = torch.randint(0, 11, (2, 5), device=DEV)
    targets = torch.randint(0, 37, (6,), device=DEV)
    targets[1] = -100
    return [
        ("add", custom_ops._add, (_r(3, 7), _r(3, 7))),
        ("gelu_tanh", custom_ops._gelu_tanh, (_r(3, 7),)),
        ("silu_mul", custom_ops._silu_mul, (_r(3, 7), _r(3, 7))),
        ("embedding", custom_ops._embedding, (ids, _r(11, 8))),
        ("layer_norm", custom_ops._layer_norm, (_r(2, 3, 24), _r(24), _r(24), 1e-5)),
        ("layer_norm no bias", custom_ops._layer_norm, (_r(2, 3, 24), _r(24), None, 1e-5)),
        ("rms_norm", custom_ops._rms_norm, (_r(2, 3, 24), _r(24), 1e-6)),
        ("add_layer_norm", custom_ops._add_norm, (_r(2, 3, 24), _r(2, 3, 24).half(), _r(24), _r(24), 1e-5, False)),
        ("add_rms_norm", custom_ops._add_norm, (_r(2, 3, 24), _r(2, 3, 24), _r(24), None, 1e-6, True)),
        ("apply_rope", custom_ops._apply_rope, (q, cos, sin, False)),
        ("flash_attention", custom_ops._flash_attention, (q, k, v, True, None, None, None)),
        ("qkv_attention", custom_ops._qkv_attention, (_r(2, 5, 96), 2, True, None)),
        ("linear", custom_ops._linear, (_r(6, 24), _r(10, 24), _r(10))),
        ("cross_entropy", custom_ops._cross_entropy, (_r(6, 37), targets, -100, "mean")),
        ("fused_linear_cross_entropy", custom_ops._fused_linear_cross_entropy,
         (_r(6, 24), _r(37, 24), targets, None, -100, "mean", True, True, False)),
    ]  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_custom_op_passes_opcheck(case):
    """opcheck runs the op for real and with fake tensors and compares shapes, strides and dtypes,
    checks the schema against what the op does, and that its backward is registered."""
    _, op, args = case
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("name, fused", [("gpt2-tiny", True), ("qwen2-tiny", False)],
                         ids=["gpt2-fused-loss", "qwen2-loss"])  # between them, every custom op
def test_compiled_model_on_the_triton_backend_matches_eager(name, fused):
    results = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_name(name).to(DEV).train()
        x = torch.randint(0, model.config.vocab_size, (2, 16), device=DEV)
        fn = functools.partial(fused_loss_fn if fused else loss_fn, model)
        if mode == "compiled":
            torch._dynamo.reset()
            fn = torch.compile(fn, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
        with use_backend("triton"):
            loss = fn(x, x)
        loss.backward()
        results[mode] = (loss.detach(), [p.grad for p in model.parameters()])
    torch.testing.assert_close(results["compiled"][0], results["eager"][0], rtol=1e-5, atol=1e-5)
    for g_c, g_e in zip(results["compiled"][1], results["eager"][1]):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


COLD_START = """
import functools, torch
from llm_course.generation.cuda_graph import op_backends
from llm_course.models import AutoModelForCausalLM
from llm_course.training.loss import fused_loss_fn
model = AutoModelForCausalLM.from_name("gpt2-tiny")
x = torch.randint(0, 100, (1, 8))
step = torch.compile(functools.partial(fused_loss_fn, model), backend="aot_eager", fullgraph=True)
with op_backends("triton", {"linear": "torch"}):
    step(x, x).backward()
print("ok")
"""


def test_compile_before_any_eager_call():
    """A fresh process whose first call of an op is being traced: the kernel modules are not loaded
    yet, and torch.compile cannot import them; entering the backend imports them first."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1") if DEV.type == "cpu" else dict(os.environ)
    r = subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]

"""Triton's interpreter must be on before anything imports Triton (CPU only).

``torch._dynamo`` imports Triton (an optimizer's first step imports it, and so does
``torch.compile``). Triton decides once, when ``triton.language`` is imported, whether its own
helpers (``tl.sum``, ``tl.max``) are interpreted; so ``import llm_course`` switches the
interpreter on at once, and a Triton imported in compiled mode earlier is a clear error.
Each case runs in a fresh Python, since the order of imports is what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_course.device import has_gpu

pytestmark = pytest.mark.skipif(has_gpu(), reason="the interpreter is the CPU's")

KERNEL_AFTER_AN_OPTIMIZER_STEP = """
import torch
from llm_course import ops
from llm_course.backends import use_backend
p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)
torch.optim.AdamW([p]).step()          # imports torch._dynamo, which imports triton
import torch._dynamo
x, w = torch.randn(4, 32), torch.ones(32)
with use_backend("triton"):
    y = ops.rms_norm(x, w)
with use_backend("torch"):
    assert torch.allclose(y, ops.rms_norm(x, w), atol=1e-5)
print("ok")
"""

TRITON_FIRST = """
import torch._dynamo                   # triton imported before llm_course
import torch
from llm_course import ops
from llm_course.backends import use_backend
with use_backend("triton"):
    ops.rms_norm(torch.randn(4, 32), torch.ones(32))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_kernels_run_after_torch_dynamo_was_imported():
    r = _run(KERNEL_AFTER_AN_OPTIMIZER_STEP)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_triton_imported_first_is_a_clear_error():
    r = _run(TRITON_FIRST)
    assert r.returncode != 0
    assert "Import llm_course before anything else" in r.stderr, r.stderr[-2000:]

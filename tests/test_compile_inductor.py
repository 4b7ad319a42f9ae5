"""The models under inductor: each Triton custom op is first met with shallow inputs.

When inductor lowers a custom op it has not met before, it registers a fallback for it
and, on PyTorch 2.11 and older, first writes a log line with ``str()`` of every input's IR
(eagerly, even with the log off). That string follows the input's whole history through
the graph, and where the history is a chain of custom ops that each read the previous
one twice (the residual stream and the sub-layer output), its length grows several times
per layer: a 12-layer GPT-2 never finishes compiling. So the models are written so that
every custom op is first met near the start of the forward graph or the end of the
backward graph (``llm_course/models/gpt2.py``, ``Block``).

PyTorch 2.14 builds that string only when the log is on; the test builds it anyway, for
each op the first time inductor meets it, and bounds its size. A model whose op first
meets the deep stream (GPT-2 with ``ln_f`` fused into the last residual add: 10 MB at 3
layers, 50 MB at 4) fails it.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import pytest
import torch

from llm_course.generation.cuda_graph import op_backends
from llm_course.models import AutoModelForCausalLM
from llm_course.training.loss import fused_loss_fn, loss_fn

graph = pytest.importorskip("torch._inductor.graph")


@pytest.mark.skipif(not hasattr(graph, "LazyString"), reason="this PyTorch formats the string eagerly itself")
@pytest.mark.parametrize("name, fused", [("gpt2-tiny", True), ("qwen2-tiny", False)])
def test_inductor_meets_each_custom_op_first_with_shallow_inputs(name, fused, monkeypatch):
    sizes: dict[str, tuple[int, float]] = {}
    lazy = graph.LazyString

    def eager(fn, *args):  # what PyTorch <= 2.11 does with the first-meeting log line
        if getattr(fn, "__name__", "") == "operator_str" and str(args[0]).startswith("llm_course."):
            t0 = time.perf_counter()
            sizes[str(args[0])] = (len(fn(*args)), time.perf_counter() - t0)
        return lazy(fn, *args)

    monkeypatch.setattr(graph, "LazyString", eager)
    from torch._inductor import lowering

    for op in [op for op in lowering.lowerings if str(op).startswith("llm_course.")]:
        monkeypatch.delitem(lowering.lowerings, op)  # as in a fresh process: met for the first time
    torch._dynamo.reset()
    base = AutoModelForCausalLM.from_name(name).config
    model = AutoModelForCausalLM.from_config(dataclasses.replace(base, n_layer=4)).train()
    x = torch.randint(0, base.vocab_size, (2, 16))
    step = torch.compile(functools.partial(fused_loss_fn if fused else loss_fn, model))
    no_cache = torch._inductor.config.patch(fx_graph_cache=False, autotune_local_cache=False)  # lower, don't reload
    with no_cache, torch._functorch.config.patch(enable_autograd_cache=False):
        with op_backends("triton", {"linear": "torch"}), torch.autocast("cpu", dtype=torch.float16):
            loss = step(x, x)
        loss.backward()
    torch._dynamo.reset()
    assert sizes, "inductor met no course op: the test no longer sees what it checks"
    too_long = {op: n for op, (n, _) in sizes.items() if n > 2_000_000}
    assert not too_long, f"custom ops first met with deep inputs (characters of IR printed): {too_long}"

"""Every op, forward and backward, can be captured in a CUDA graph (GPU only).

A decode loop or a training step made of these ops pays the host's cost of each
call (checks, autograd, launches) unless it is replayed as a graph, and a graph can
only hold work that never waits for the host. Each op is captured with its backward
(``torch.autograd.grad``) on the Triton backend, replayed on new inputs, and compared
with the same op run eagerly.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.backends.registry import declared_ops, use_backend
from op_samples import SAMPLES

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_op_forward_and_backward_replay_from_a_cuda_graph(name):
    from llm_course import ops

    assert name in declared_ops()
    dev = torch.device("cuda")
    args, kwargs = SAMPLES[name](dev)
    leaves = [a for a in args if a.is_floating_point()]
    if name == "apply_rope":  # the rotation tables are constants: the kernel gives no gradient for them
        leaves = leaves[:1]
    for a in leaves:
        a.requires_grad_(True)
    fn = getattr(ops, name)

    def step():
        out = fn(*args, **kwargs)
        return (out, *torch.autograd.grad(out, leaves, dy))

    with use_backend("triton"):
        dy = torch.randn_like(fn(*args, **kwargs))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (compile, autotune) outside the capture
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        # new values in the same tensors, then replay
        with torch.no_grad():
            for a in leaves:
                a.copy_(torch.randn_like(a))
            dy.copy_(torch.randn_like(dy))
        graph.replay()
        torch.cuda.synchronize()
        expected = step()
    for got, want in zip(captured, expected):
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)

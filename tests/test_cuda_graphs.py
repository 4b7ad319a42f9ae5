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
    assert name in declared_ops()
    args, kwargs = SAMPLES[name](torch.device("cuda"))
    _check_replay(name, args, kwargs)


def test_attention_with_tma_loads_replays_from_a_cuda_graph():
    """Head dim 128 on Hopper: the forward's K and V descriptors are captured with the launch, then replayed."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 200, 128, generator=g).to("cuda", torch.bfloat16) for h in (4, 2, 2))  # GQA: 2 kv heads
    _check_replay("attention", (q, k, v), {"causal": True})


def _check_replay(name, args, kwargs):
    """Capture ``name``'s forward and backward in a CUDA graph, replay it on new values, compare with eager."""
    from llm_course import ops

    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]  # qkv_attention also takes a head count
    if name == "apply_rope":  # the rotation tables are constants: the kernel gives no gradient for them
        leaves = leaves[:1]
    for a in leaves:
        a.requires_grad_(True)
    op = getattr(ops, name)

    def fn(*a, **k):  # one tensor, also for the ops with two outputs (add_layer_norm: the sum and its norm)
        out = op(*a, **k)
        return torch.cat([o.float().flatten() for o in out]) if isinstance(out, tuple) else out

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


@pytest.mark.parametrize("num_kv_heads", [2, 4])
def test_decode_attention_replays_while_the_lengths_advance(num_kv_heads):
    """A decode step captured once (forward only, the Triton kernels): each replay reads ``cache_seqlens``
    from the device, where the step itself advances it, so one graph serves every step of a generation."""
    from llm_course import ops

    dev = torch.device("cuda")
    B, Hq, S, D = 2, 28 if num_kv_heads == 4 else 14, 8192, 128
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, Hq, 1, D, generator=g, device=dev, dtype=torch.bfloat16)
    k, v = (torch.randn(B, num_kv_heads, S, D, generator=g, device=dev, dtype=torch.bfloat16) for _ in range(2))
    start = torch.tensor([100, 5000], dtype=torch.int32, device=dev)
    lengths = start.clone()
    mask = torch.ones(B, S, dtype=torch.bool, device=dev)
    mask[0, :40] = False  # left padding in row 0

    def step():
        out = ops.decode_attention(q, k, v, lengths, window=4096, key_padding_mask=mask)
        lengths.add_(1)  # the next step sees one more slot, without the host
        return out

    with use_backend("triton"), torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and tune outside the capture
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        lengths.copy_(start)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        lengths.copy_(start)  # capturing ran nothing: start again
        for i in range(3):
            q.copy_(torch.randn(q.shape, generator=g, device=dev, dtype=q.dtype))
            graph.replay()
            torch.cuda.synchronize()
            expected = ops.decode_attention(q, k, v, start + i, window=4096, key_padding_mask=mask)
            torch.testing.assert_close(captured, expected, atol=1e-2, rtol=1e-2)
        assert torch.equal(lengths, start + 3)

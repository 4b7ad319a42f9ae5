"""Preparing a model for fast decoding: fused projections.

A decode step at batch 1 is a chain of matrix-vector products, each of which reads its
weight once and then waits for the next launch. Qwen2's attention projects its input
three times (q, k, v) and its MLP twice (gate, up), so a layer spends five launches
where two would do. :func:`fuse_projections_` stacks those weights, layer by layer,
into one matrix each (``models/components/fused.py``): the layers then call
``ops.linear`` once and take their q, k, v (or gate, up) as views of the result, and
attention rotates queries and keys with one ``ops.apply_rope`` over both.

Nothing about the model's outside changes: the parameter names, shapes and values
are those of the checkpoint (each projection's Parameter becomes a view of its rows
in the stacked matrix, so no weight is held twice), ``state_dict()`` has the same
keys, and ``save_pretrained`` still writes a Hugging Face checkpoint. The fused path
is taken only for inference (eval mode, autograd off); training runs the separate
projections, reading the same memory.

GPT-2 needs nothing: its ``c_attn`` was always one product for q, k and v, and its
MLP has no gate.

    model = load_pretrained("qwen2-0.5b").eval()
    fuse_projections_(model)          # in place; returns the number of layers fused
    with torch.no_grad():
        logits = model(ids)           # the same logits (up to float rounding), fewer launches
    unfuse_projections_(model)        # back to separate storage per Parameter
"""

from __future__ import annotations

from torch import nn


def _fusable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "fuse_projections") and hasattr(m, "unfuse_projections")]


def fuse_projections_(model: nn.Module) -> int:
    """Fuse the projections of every layer that can (q/k/v of grouped-query attention, gate/up of SwiGLU), in place.

    Returns how many modules were fused (0 for GPT-2: nothing to do). Call it after the
    weights are loaded; fusing again is harmless (the layers stack their current weights).
    """
    modules = _fusable(model)
    for m in modules:
        m.fuse_projections()
    return len(modules)


def unfuse_projections_(model: nn.Module) -> int:
    """Undo :func:`fuse_projections_`: every projection gets storage of its own again. Returns the modules unfused."""
    n = 0
    for m in _fusable(model):
        if is_fused(m):
            m.unfuse_projections()
            n += 1
    return n


def is_fused(model: nn.Module) -> bool:
    """Does any layer of ``model`` hold a fused projection?"""
    return any(getattr(m, "fused_qkv", None) is not None or getattr(m, "fused_gate_up", None) is not None
               for m in model.modules())  # fmt: skip

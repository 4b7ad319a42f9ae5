"""Several projections of the same input as one matrix product, for inference.

Grouped-query attention projects its input three times (``q_proj``, ``k_proj``,
``v_proj``) and the gated MLP twice (``gate_proj``, ``up_proj``). When a single token
is decoded, each projection is a matrix-vector product that reads its whole weight
and does almost no arithmetic: what costs is the launch and the trip through memory.
Stacking the weights row-wise gives one matrix whose product with x is the
concatenation of the separate products::

    [W_q; W_k; W_v] x = [W_q x; W_k x; W_v x]        (N_q + N_k + N_v, K) @ (K,)

so one launch reads all three weights in one stream, and the k/v products, tiny
for grouped-query attention (3584 -> 512 for a 7B Qwen2), no longer pay a launch
of their own. The outputs are then split apart as *views* (no copy).

:class:`FusedProjection` does this without holding the weights twice: it allocates
the stacked matrix, copies each layer's weight into its rows, and then makes each
layer's ``weight`` (and ``bias``) Parameter a view of those rows. The parameter
names, shapes and values are unchanged, so ``state_dict()`` keys and values are the
same as before; an in-place ``load_state_dict`` or an optimizer step writes through
the views into the stacked matrix.

Things to know:

* **Inference only.** The stacked matrix is a plain tensor, not a Parameter: no
  gradient reaches it. The layers use it only when autograd is off (``torch.no_grad()``,
  ``torch.inference_mode()``) and the module is in eval mode, and otherwise run their
  separate projections (the same values, read through the views).
* ``model.to(...)``, ``.half()`` and the like give the layers new tensors; the layers
  then fuse again (their ``_apply``). ``load_state_dict(..., assign=True)`` replaces
  the Parameters behind the fusion's back: fuse again afterwards
  (``llm_course.models.inference.fuse_projections_``).
* Each layer's Parameter shares its storage with the others (views of disjoint rows):
  ``save_pretrained`` writes them as separate tensors, as before (``safetensors`` refuses
  only tensors whose memory overlaps).
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops


class FusedProjection:
    """Linears of the same input, ``[l(x) for l in linears]``, computed by one ``ops.linear``.

    ``FusedProjection(linears)``: the Linear layers (same ``in_features``, all with a bias
    or none), re-pointed at rows of one ``weight`` (N, K), N = the sum of their
    ``out_features``. ``proj(x)`` -> (..., N); ``proj.split(y)`` -> the layers' outputs,
    views of y; ``proj.unfuse()`` gives each layer its own storage back.
    """

    def __init__(self, linears: list[nn.Module]):
        if len(linears) < 2:
            raise ValueError("FusedProjection: give at least two linear layers")
        w0 = linears[0].weight
        K = w0.shape[1]
        has_bias = [lin.bias is not None for lin in linears]
        for lin in linears:
            w = lin.weight
            if w.dim() != 2 or w.shape[1] != K or w.dtype != w0.dtype or w.device != w0.device:
                raise ValueError(f"FusedProjection: the layers must share in_features, dtype and device; got weights "
                                 f"{[(tuple(x.weight.shape), x.weight.dtype, str(x.weight.device)) for x in linears]}")  # fmt: skip
        if any(has_bias) and not all(has_bias):
            raise ValueError("FusedProjection: either all layers have a bias or none does")
        self.linears = list(linears)
        self.sizes = [lin.weight.shape[0] for lin in linears]  # N_i
        with torch.no_grad():
            self.weight = torch.cat([lin.weight.detach() for lin in linears])  # (N, K)
            self.bias = torch.cat([lin.bias.detach() for lin in linears]) if has_bias[0] else None  # (N,)
        start = 0
        for lin, n in zip(linears, self.sizes):  # each layer's Parameters become views of the stacked rows
            lin.weight = nn.Parameter(self.weight[start : start + n], requires_grad=lin.weight.requires_grad)
            if self.bias is not None:
                lin.bias = nn.Parameter(self.bias[start : start + n], requires_grad=lin.bias.requires_grad)
            start += n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)  # (..., K) -> (..., N)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(..., N) -> the layers' outputs (..., N_i), views of y."""
        return y.split(self.sizes, dim=-1)

    def is_current(self) -> bool:
        """Do the layers' Parameters still live in the stacked matrix? (host-only, for checks and tests)"""
        ptr, item = self.weight.data_ptr(), self.weight.element_size()
        start = 0
        for lin, n in zip(self.linears, self.sizes):
            if lin.weight.data_ptr() != ptr + start * self.weight.shape[1] * item:
                return False
            start += n
        return True

    def fuse_again(self) -> FusedProjection:
        """A new fusion of the same layers (after ``.to()`` gave them new tensors)."""
        return FusedProjection(self.linears)

    def unfuse(self) -> None:
        """Give every layer a Parameter with storage of its own (a copy of its rows)."""
        for lin in self.linears:
            lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=lin.weight.requires_grad)
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=lin.bias.requires_grad)


def use_fused(module: nn.Module, fused: FusedProjection | None) -> bool:
    """Take the fused path? Only for inference: a fusion exists, eval mode, autograd off."""
    return fused is not None and not module.training and not torch.is_grad_enabled()

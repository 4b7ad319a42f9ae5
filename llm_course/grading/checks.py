"""Assertions for graded tests that explain a failure in one plain sentence.

The grader shows the first line of a failing assertion's message, so these
helpers put the learner-facing sentence first and the numbers after it.
"""

from __future__ import annotations

import torch

# Tolerances per dtype, for results compared with a float64 reference.
# fp32 on the CPU (and in the Triton interpreter) is close to exact; a GPU's
# tl.dot on fp32 inputs uses TF32 and needs the looser 'tf32' entry.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    "tf32": dict(atol=1e-2, rtol=1e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def tolerance(dtype) -> dict:
    return dict(TOLERANCES[dtype])


def assert_close(actual, expected, *, hint: str, dtype=None, atol=None, rtol=None, what="the output") -> None:
    """Fail with ``hint`` (a plain sentence) when ``actual`` is not close to ``expected``.

    ``expected`` is usually computed in float64; the tolerance comes from
    ``dtype`` (default: ``actual``'s dtype) unless atol/rtol are given.
    """
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{hint} ({what} should be a tensor, got {type(actual).__name__})")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    tol = tolerance(dtype or actual.dtype)
    atol = tol["atol"] if atol is None else atol
    rtol = tol["rtol"] if rtol is None else rtol
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not torch.isfinite(a).all() and torch.isfinite(e).all():
        bad = (~torch.isfinite(a)).nonzero()[0].tolist()
        raise AssertionError(f"{hint} ({what} has inf/NaN, first at index {bad})")
    err = (a - e).abs()
    bound = atol + rtol * e.abs()
    if (err > bound).any():
        idx = (err - bound).flatten().argmax().item()
        pos = list(torch.unravel_index(torch.tensor(idx), a.shape)) if a.dim() else []
        pos = [int(p) for p in pos]
        raise AssertionError(
            f"{hint} ({what}: max error {err.max().item():.3g} at index {pos}: "
            f"got {a.flatten()[idx].item():.6g}, expected {e.flatten()[idx].item():.6g}; atol={atol:g}, rtol={rtol:g})"
        )

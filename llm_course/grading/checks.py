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


def which_mistake(actual, expected, mistakes, *, atol: float = 1e-4, rtol: float = 1e-4) -> str | None:
    """The sentence of the first usual mistake that ``actual`` looks like, or None.

    ``mistakes`` holds ``(wrong, sentence)`` pairs, ``wrong`` being what that
    mistake computes: a tensor, or a function of no arguments that returns one
    (called only when needed). A mistake is named only when it shows: its result
    differs from ``expected`` by more than atol/rtol somewhere, ``actual`` is
    within atol/rtol of it, and ``actual`` is closer to it than to ``expected``.
    So a rounding difference is never diagnosed as a conceptual mistake (with
    one token, "every token got the angles of token 0" gives the right answer).
    """
    if not isinstance(actual, torch.Tensor):
        return None
    a = actual.detach().double().cpu().nan_to_num(0.0)
    e = expected.detach().double().cpu().nan_to_num(0.0)
    if a.shape != e.shape:
        return None
    for wrong, sentence in mistakes:
        w = wrong() if callable(wrong) else wrong
        w = w.detach().double().cpu().nan_to_num(0.0)
        if w.shape != e.shape or torch.allclose(w, e, atol=atol, rtol=rtol):
            continue  # this mistake gives the right answer here: it cannot be told apart
        if torch.allclose(a, w, atol=atol, rtol=rtol) and (a - w).abs().max() < (a - e).abs().max():
            return sentence
    return None


# --- guard regions: a stray store becomes a failure with a sentence, not a crash -------------------

SENTINEL = 999.0  # exact in float16 and float32; a large logit, so reading it changes a softmax a lot
GUARD = 4096  # default elements of guard before and after a tensor: more than the widest block a test uses


def guarded(values: torch.Tensor, name: str, *, pad: int = GUARD, margin: int | None = None, fill: float = SENTINEL) -> torch.Tensor:
    """A copy of ``values`` that lives inside a larger buffer filled with ``fill``: the guard region.

    By default the copy is contiguous and has ``pad`` elements of guard before
    and after it. With ``margin`` (2-D only) it is a (rows, cols) view in the
    middle of a (rows + 2 margin, cols + 2 margin) buffer: rows are
    ``cols + 2 margin`` elements apart, and a store one column past a row's end
    lands in the guard. A load past the end reads ``fill`` (pick NaN for inputs
    whose stray reads must spoil the result); a store past the end changes the
    guard, which :func:`assert_guards_intact` reports, naming ``name``.
    """
    if margin is None:
        n = values.numel()
        buf = torch.full((pad + n + pad,), fill, dtype=values.dtype, device=values.device)
        view = buf[pad : pad + n].view(values.shape)
    else:
        if values.dim() != 2:
            raise ValueError(f"guarded: margin= needs a 2-D tensor, got shape {tuple(values.shape)}")
        rows, cols = values.shape
        buf = torch.full((rows + 2 * margin, cols + 2 * margin), fill, dtype=values.dtype, device=values.device)
        view = buf[margin : margin + rows, margin : margin + cols]
    view.copy_(values)
    inside = torch.zeros(buf.numel(), dtype=torch.bool, device=values.device)
    inside.as_strided(view.shape, view.stride(), view.storage_offset()).fill_(True)
    view._llm_guard = (name, fill, buf.view(-1), inside, margin)
    return view


def guarded_empty(shape, dtype=torch.float32, device=None, *, name: str, fill: float = SENTINEL, **layout) -> torch.Tensor:
    """An output tensor of ``shape`` inside a guard region (see :func:`guarded`), every element ``fill``.

    Pass it as the ``out`` of a launcher (or the output pointer of a kernel),
    then call :func:`assert_guards_intact` on it.
    """
    from llm_course.device import get_device

    values = torch.full(tuple(shape), fill, dtype=dtype, device=device or get_device())
    return guarded(values, name, fill=fill, **layout)


def assert_guards_intact(*tensors: torch.Tensor, hint: str | None = None) -> None:
    """Fail with a sentence when anything in the guard region around these :func:`guarded` tensors changed.

    The sentence names the tensor and where the kernel wrote: past its end,
    before its start, or (a view with rows apart in memory) between its rows.
    """
    for t in tensors:
        name, fill, flat, inside, margin = t._llm_guard
        same = flat == torch.tensor(fill, dtype=flat.dtype, device=flat.device) if fill == fill else flat.isnan()
        changed = (~same & ~inside).nonzero().flatten().cpu()
        if changed.numel() == 0:
            continue
        elements = inside.nonzero().flatten().cpu()
        first, last = (int(elements[0]), int(elements[-1])) if elements.numel() else (0, -1)
        n = changed.numel()
        count = f"{n} element{'s' * (n != 1)}"
        if margin is not None:  # name one changed element by its (row, column) relative to the view
            width = t.shape[1] + 2 * margin
            r, c = int(changed[0]) // width - margin, int(changed[0]) % width - margin
            where = f"outside `{name}`"
            detail = f"{count} around it changed, the first at {name}[{r}, {c}] of a {tuple(t.shape)} tensor"
            advice = "are the rows and columns masked (< M, < N) and every address built from the strides?"
        elif int(changed[0]) > last:
            where = f"past the end of `{name}`"
            far = int(changed[-1]) - last
            detail = f"the {count} right after it changed" if far == n else f"{count} changed, up to {far} past its end"
            detail += f"; {name} has {t.numel()}"
            advice = "is the store masked?"
        elif int(changed[-1]) < first:
            where = f"before the start of `{name}`"
            far = first - int(changed[0])
            detail = f"the {count} right before it changed" if far == n else f"{count} changed, up to {far} before it"
            advice = "are the offsets built from the program id, and never negative?"
        else:
            where = f"between the elements of `{name}`"
            detail = f"{count} changed"
            advice = "is every address built from the tensor's strides?"
        raise AssertionError(f"your kernel wrote {where}: {hint or advice} ({detail})")

"""Input checks for Triton kernels: public, for the course's kernels and the exercises alike.

A kernel cannot tell a wrong input from a right one: it reads whatever memory
it is pointed at. So the function that takes a kernel's inputs (the entry
point, e.g. ``rms_norm`` in ``rmsnorm.py``, or a launcher called on its own)
checks them once, before any launch, and raises an error that names the op,
the argument and the problem, instead of computing a wrong answer or crashing
inside the kernel:

    from llm_course.backends.triton_ops.checks import check_same_device, check_same_dtype, check_tensor, check_tensors

    check_tensor("softmax", "x", x)                       # a tensor Triton can run on, a float dtype
    check_tensor("matmul", "a", a, ndim=2)                # ... of rank 2
    check_tensors("layer_norm", x=x, weight=w, bias=b)    # check_tensor for each (b None: skipped)
    check_same_device("add", x=x, y=y)                    # all on one device
    check_same_dtype("add", x=x, y=y)                     # all of one dtype

What is checked here is what a *kernel* needs: a device Triton runs on (the
GPU, or the CPU through the interpreter when there is no GPU), a dtype the
kernel supports (bfloat16 only on a GPU), a rank, contiguity. What every
backend of an op needs (shapes that agree, a valid ``eps``) is the op's own
check, in ``llm_course/backends/checks.py``, which ``llm_course.ops`` runs
before any backend. Most of the ops' entry points (``softmax``, ``rms_norm``, ...)
run that check themselves, then only their kernels' own, and are marked
``@checks_own_inputs`` (``llm_course/backends/registry.py``): a direct call is
checked as fully as ``llm_course.ops.softmax(...)``, and that call checks once.
"""

from __future__ import annotations

import torch

from llm_course.backends.checks import require_device, require_same_dtype
from llm_course.device import check_triton_dtype, has_gpu

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(
    op: str,
    name: str,
    t: torch.Tensor,
    *,
    dtypes: tuple = FLOATS,
    ndim: int | tuple[int, ...] | None = None,
    contiguous: bool = False,
) -> None:
    """Check one input: a tensor, on a device Triton can run on, of a supported dtype and rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    kind = t.device.type  # (asked once: every op calls this for each input, on the host's time)
    if kind == "cuda":
        pass
    elif kind == "cpu":
        if has_gpu():
            raise ValueError(f"{op}: {name} is on the CPU but Triton runs on the GPU here; move it with .to(get_device())")
    else:
        raise ValueError(f"{op}: {name} is on device {t.device}, which Triton cannot run on")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: {name} has dtype {str(t.dtype).removeprefix('torch.')}; supported: {allowed}")
    if t.dtype is torch.bfloat16:  # only bfloat16 has an interpreter trap: skip the question otherwise
        check_triton_dtype(op, t)
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if t.dim() not in dims:
            raise ValueError(f"{op}: {name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (shape {tuple(t.shape)}, strides {t.stride()}); call .contiguous()")


def check_tensors(op: str, **tensors: torch.Tensor | None) -> None:
    """:func:`check_tensor` with its defaults for each named tensor; None (an absent optional tensor) is skipped.

        check_tensors("layer_norm", x=x, weight=weight, bias=bias)   # bias may be None
    """
    for name, t in tensors.items():
        if t is not None:
            check_tensor(op, name, t)


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    """All the given tensors on one device (None stands for an absent optional tensor): the op contract's own check."""
    require_device(op, **tensors)


def check_same_dtype(op: str, **tensors: torch.Tensor) -> None:
    """All the given tensors of one dtype (None stands for an absent optional tensor): the op contract's own check."""
    require_same_dtype(op, **tensors)

"""Launching a kernel again without redoing Triton's per-call bookkeeping.

``kernel[grid](*args, **meta)`` does three things at every call:

1. *specialize*: look at every argument (a tensor's dtype and whether its address
   is a multiple of 16; whether an int is 1 or a multiple of 16) and build a key;
2. *look up* the compiled kernel under that key (compiling it the first time);
3. *launch* it: hand the grid, the stream and the arguments to a small C launcher.

Only the third is the launch. On an H200's host (Triton 3.6) a whole call costs
about 25 us and the C launcher alone 8.5 us: a LayerNorm forward+backward makes
two launches, and at 32768x4096 its kernels take 0.35 ms, so the bookkeeping
is a noticeable part of what a training step pays the host for a norm.

``launch(kernel, grid, *args, **meta)`` does the same as ``kernel[grid](*args, **meta)``
and returns the same compiled kernel. The first call of a kind goes through
Triton. Later calls build a cheaper key, which tells apart at least every case
that Triton's specialization tells apart, and call the compiled kernel's launcher
directly:

    per argument      key part                            Triton specializes on
    tensor            (dtype, address % 16 == 0)          dtype, 16-byte alignment
    int               (== 1, % 16 == 0, int32 or not,     the same facts
                       unsigned 64-bit or not)
    float             float                               nothing (always fp32)
    anything else     the value itself                    (None, a bool)
    constexprs, num_warps, num_stages: their values;  the current CUDA device.

Under the interpreter there is no compiled kernel: ``launch`` is then exactly
``kernel[grid](...)``. Runtime arguments must be passed by position and
constexprs and options by keyword, as the course's launchers do. One check of
Triton's is not repeated on the cached path: that no module-level value a kernel
reads has changed since it was compiled. Pass such values as arguments (the
course's kernels take their constants as constexpr arguments).
"""

from __future__ import annotations

from llm_course.device import configure_triton, is_interpreter

configure_triton()

import torch  # noqa: E402
from triton import knobs  # noqa: E402
from triton.runtime import driver  # noqa: E402

_CACHE: dict[tuple, tuple] = {}  # key -> (compiled kernel, values of the params after the positional ones, kernel)


def call_key(kernel, device: int, args: tuple, meta: dict) -> tuple:
    """The cache key of one call (see the table in the module docstring).

    One plain loop over the arguments: this runs at every launch, and a function call
    per argument would cost the host more than the comparisons themselves.
    """
    # id(kernel), not the kernel: hashing a JITFunction hashes its source. The entry keeps the kernel
    # alive, so its id cannot be given to another object while the entry exists.
    key = [id(kernel), device]
    for a in args:
        kind = type(a)
        if kind is int:
            key.append((a == 1, a & 15 == 0, -0x80000000 <= a < 0x80000000, a >= 0x8000000000000000))
        elif kind is float:
            key.append(float)
        elif isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() & 15 == 0))
        else:
            key.append(a)
    key.extend(meta.items())
    return tuple(key)


def _tail(kernel, n_positional: int, meta: dict) -> tuple | None:
    """Values of the params after the positional ones (constexprs from ``meta`` or their defaults), in order.

    None when that is not the shape of the call (a runtime argument passed by keyword): such a
    call always goes through Triton.
    """
    tail = []
    for p in kernel.params[n_positional:]:
        if not p.is_constexpr:
            return None
        if p.name in meta:
            tail.append(meta[p.name])
        elif p.has_default:
            tail.append(p.default)
        else:
            return None
    return tuple(tail)


def launch(kernel, grid: tuple, *args, **meta):
    """``kernel[grid](*args, **meta)``, with the lookup cached after the first call of each kind. Returns the compiled kernel."""
    if is_interpreter():
        return kernel[grid](*args, **meta)
    device = torch.cuda.current_device()  # Triton launches on the current device, as here
    key = call_key(kernel, device, args, meta)
    hit = _CACHE.get(key)
    if hit is None:
        compiled = kernel[grid](*args, **meta)
        tail = _tail(kernel, len(args), meta)
        if tail is not None and hasattr(compiled, "packed_metadata"):  # the launcher's arguments as below
            _CACHE[key] = (compiled, tail, kernel)
        return compiled
    compiled, tail, _ = hit
    values = (*args, *tail)
    stream = driver.active.get_current_stream(device)
    grid3 = (*grid, 1, 1)
    # what Triton's own launch does once it has the compiled kernel (runtime/jit.py, JITFunction.run)
    compiled.run(grid3[0], grid3[1], grid3[2], stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata(grid, stream, *values),
                 knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *values)  # fmt: skip
    return compiled

"""``launch_cache.launch``: the same launch as ``kernel[grid](...)``, with Triton's lookup done once per kind of call.

The cache must never reuse a compiled kernel for a call that Triton would have
specialized differently (another dtype, an address that is not 16-byte aligned, an
int that is 1 or not a multiple of 16), and must launch exactly what Triton would.
The key and the argument order are checked here on any machine; the launches
themselves only on a GPU (under the interpreter ``launch`` is ``kernel[grid]``).
"""

from __future__ import annotations

import pytest
import torch

from llm_course.backends.triton_ops import launch_cache
from llm_course.backends.triton_ops.launch_cache import _tail, call_key, launch
from llm_course.device import configure_triton

configure_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def scale_kernel(x_ptr, y_ptr, n, alpha, BLOCK: tl.constexpr, SHIFT: tl.constexpr = 0.0):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (x * alpha + SHIFT).to(y_ptr.dtype.element_ty), mask=mask)


def _arg_key(a):
    """The part of a call's key that one argument gives (a one-argument call of a stand-in kernel)."""
    return call_key(scale_kernel, 0, (a,), {})[2:]


def test_the_key_tells_apart_what_triton_specializes_on():
    base = torch.zeros(64, dtype=torch.float16)
    assert _arg_key(base) == _arg_key(torch.zeros(64, dtype=torch.float16))
    assert _arg_key(base) != _arg_key(base[1:])  # 2 bytes off: no longer 16-byte aligned
    assert _arg_key(base) == _arg_key(base[8:])  # 16 bytes off: aligned again
    assert _arg_key(base) != _arg_key(base.float())
    assert _arg_key(1) != _arg_key(2) != _arg_key(32)
    assert _arg_key(32) == _arg_key(4096) and _arg_key(33) == _arg_key(4095)
    assert _arg_key(16 * 2**31) != _arg_key(16)  # int64, not int32
    assert _arg_key(2**64 - 16) != _arg_key(2**40)  # unsigned 64-bit
    assert _arg_key(0.5) == _arg_key(1e-5)  # floats are not specialized on their value
    meta = {"BLOCK": 128, "num_warps": 4}
    assert call_key(scale_kernel, 0, (base, 4), meta) != call_key(scale_kernel, 1, (base, 4), meta)  # another GPU
    assert call_key(scale_kernel, 0, (base, 4), meta) != call_key(scale_kernel, 0, (base, 4), {**meta, "BLOCK": 64})
    assert _arg_key(True) != _arg_key(1) and _arg_key(None) == (None,)


def test_the_params_after_the_positional_ones_come_from_meta_or_their_defaults():
    kernel = getattr(scale_kernel, "fn", scale_kernel)
    if not hasattr(kernel, "params"):
        kernel = triton.runtime.jit.JITFunction(kernel)  # the interpreter's wrapper: build the compiled-mode object
    assert _tail(kernel, 4, {"BLOCK": 128, "num_warps": 4}) == (128, 0.0)
    assert _tail(kernel, 4, {"BLOCK": 128, "SHIFT": 2.0}) == (128, 2.0)
    assert _tail(kernel, 3, {"alpha": 2.0, "BLOCK": 128}) is None  # a runtime argument by keyword: Triton's path
    assert _tail(kernel, 4, {}) is None  # BLOCK missing: Triton raises its own error


@pytest.mark.gpu
def test_launch_matches_triton_and_caches_one_entry_per_kind():
    dev = torch.device("cuda")
    x = torch.randn(1000, device=dev, dtype=torch.float16)
    y, ref = torch.empty_like(x), torch.empty_like(x)
    scale_kernel[(8,)](x, ref, 1000, 3.0, BLOCK=128)
    before = len(launch_cache._CACHE)
    first = launch(scale_kernel, (8,), x, y, 1000, 3.0, BLOCK=128)
    assert len(launch_cache._CACHE) == before + 1
    y.zero_()
    assert launch(scale_kernel, (8,), x, y, 1000, 3.0, BLOCK=128) is first  # the cached path
    assert len(launch_cache._CACHE) == before + 1
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    # another alpha (a float) is the same kind of call; another n (and SHIFT) is not
    launch(scale_kernel, (8,), x, y, 1000, -1.0, BLOCK=128)
    torch.testing.assert_close(y, -x, rtol=0, atol=0)
    launch(scale_kernel, (8,), x, y, 999, 1.0, BLOCK=128, SHIFT=1.0)
    torch.testing.assert_close(y[:999], x[:999] + 1, rtol=1e-3, atol=1e-3)
    assert len(launch_cache._CACHE) == before + 2


@pytest.mark.gpu
def test_launch_on_misaligned_views_is_right():
    """x[1:] of fp16 is 2 bytes off: a kernel compiled for aligned pointers must not be reused for it."""
    dev = torch.device("cuda")
    base = torch.randn(4097, device=dev, dtype=torch.float16)
    out = torch.empty(4097, device=dev, dtype=torch.float16)
    for x, y in ((base[:4096], out[:4096]), (base[1:], out[1:]), (base[:4096], out[1:]), (base[1:], out[:4096])):
        for _ in range(2):
            y.zero_()
            launch(scale_kernel, (32,), x, y, 4096, 2.0, BLOCK=128)
            torch.testing.assert_close(y, 2 * x, rtol=0, atol=0)


@pytest.mark.gpu
def test_launch_hooks_still_run_on_the_cached_path():
    from triton import knobs

    hook = knobs.runtime.launch_enter_hook
    if not hasattr(hook, "add"):
        pytest.skip("this Triton's launch hooks are a single function, not a chain")
    dev = torch.device("cuda")
    x = torch.randn(256, device=dev)
    y = torch.empty_like(x)
    launch(scale_kernel, (2,), x, y, 256, 1.0, BLOCK=128)
    seen = []
    record = lambda metadata: seen.append(metadata)  # noqa: E731
    hook.add(record)
    try:
        launch(scale_kernel, (2,), x, y, 256, 1.0, BLOCK=128)
    finally:
        hook.remove(record)
    assert len(seen) == 1


@pytest.mark.gpu
def test_the_norms_launch_through_the_cache():
    """The ops a model calls at every layer take the cached path: a second call adds no entry."""
    from llm_course import ops
    from llm_course.backends import use_backend
    from llm_course.backends.triton_ops import layernorm, rmsnorm

    dev = torch.device("cuda")
    x = torch.randn(2, 37, 300, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(300, device=dev, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(300, device=dev, dtype=torch.bfloat16, requires_grad=True)
    kernels = {id(k) for k in (layernorm.layernorm_fwd_kernel, layernorm.layernorm_bwd_kernel,
                               rmsnorm.rmsnorm_fwd_kernel, rmsnorm.rmsnorm_bwd_kernel)}  # fmt: skip

    def step():
        with use_backend("triton"):
            torch.autograd.grad(ops.layer_norm(x, w, b, 1e-5).float().sum(), [x, w, b])
            torch.autograd.grad(ops.rms_norm(x, w, 1e-6).float().sum(), [x, w])
        return {key for key in launch_cache._CACHE if key[0] in kernels}

    before = {key for key in launch_cache._CACHE if key[0] in kernels}  # other tests in this process may have added some
    first = step()
    assert len(first - before) <= 4  # each kernel once at most (none where an earlier test launched the same kind)
    assert {key[0] for key in first} == kernels, "a norm kernel did not go through the cache"
    assert step() == first, "the second call of the same kind added an entry: it did not take the cached path"

"""The backend switch: one place that decides which implementation an op runs.

Every op the models use (``llm_course.ops.softmax``, ``rms_norm``, ``matmul``,
``attention``, ...) has the same signature in each backend:

* ``"torch"``     -- the pure-PyTorch reference (``llm_course/backends/torch_ops/``);
* ``"triton"``    -- the Triton kernels (``llm_course/backends/triton_ops/``); without a
  GPU they run through the Triton interpreter;
* ``"exercises"`` -- the learner's own answers (through the grading adapter) where an
  exercise exists and is done, the course's Triton kernel otherwise.

Choose the backend, in order of precedence:

1. a context manager:   ``with use_backend("triton"): ...``
2. a global setting:    ``set_backend("triton")``
3. the environment:     ``LLM_COURSE_BACKEND=triton``
4. the default:         ``"torch"``

Implementations are registered as ``"module:function"`` strings and imported on
first use, so that ``import llm_course`` never imports a kernel module before
the Triton interpreter is configured (see ``llm_course.device``).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from typing import Callable, Iterator

BACKENDS = ("torch", "triton", "exercises")
ENV_BACKEND = "LLM_COURSE_BACKEND"

_T = "llm_course.backends.torch_ops"
_K = "llm_course.backends.triton_ops"

# op name -> backend -> "module:function"
_REGISTRY: dict[str, dict[str, str]] = {
    # stage 1
    "add": {"torch": f"{_T}.add:add", "triton": f"{_K}.add:add"},
    "softmax": {"torch": f"{_T}.softmax:softmax", "triton": f"{_K}.softmax:softmax"},
    "rms_norm": {"torch": f"{_T}.norms:rms_norm", "triton": f"{_K}.rmsnorm:rms_norm"},
    "layer_norm": {"torch": f"{_T}.norms:layer_norm", "triton": f"{_K}.layernorm:layer_norm"},
    "matmul": {"torch": f"{_T}.matmul:matmul", "triton": f"{_K}.matmul:matmul"},
    "linear": {"torch": f"{_T}.matmul:linear", "triton": f"{_K}.linear:linear"},
    # stage 2
    "apply_rope": {"torch": f"{_T}.rope:apply_rope", "triton": f"{_K}.rope:apply_rope"},
    "attention": {"torch": f"{_T}.attention:attention", "triton": f"{_K}.flash_attention:attention"},
}

# op name -> "topic:function" of the graded exercise that implements it (for "exercises")
_EXERCISES: dict[str, str] = {}
_EXERCISES["matmul"] = "stage1_kernels/matmul:matmul"
_EXERCISES["add"] = "stage1_kernels/add:add"
_EXERCISES["softmax"] = "stage1_kernels/softmax:softmax"
_EXERCISES["rms_norm"] = "stage1_kernels/rmsnorm:rms_norm"
_EXERCISES["apply_rope"] = "stage2_attention/rope:apply_rope"

_global_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("llm_course_backend", default=None)
_resolved: dict[str, Callable] = {}


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The backend in force here (context manager, then global, then $LLM_COURSE_BACKEND, then 'torch')."""
    name = _context_backend.get() or _global_backend or os.environ.get(ENV_BACKEND) or "torch"
    return _check_name(name)


def set_backend(name: str) -> None:
    """Set the backend for the whole process (a ``use_backend`` block still wins)."""
    global _global_backend
    _global_backend = _check_name(name)
    _forget_exercises()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run a block with another backend: ``with use_backend("triton"): y = ops.softmax(x)``."""
    token = _context_backend.set(_check_name(name))
    _forget_exercises()
    try:
        yield name
    finally:
        _context_backend.reset(token)


def _forget_exercises() -> None:
    """Re-read the learner's files next time (they may have been edited)."""
    for key in [k for k in _resolved if k.endswith("/exercises")]:
        del _resolved[key]


def register(op: str, backend: str, target: str | Callable) -> None:
    """Add or replace an implementation (``target`` is a callable or ``"module:function"``)."""
    if backend == "exercises":
        raise ValueError("register exercise answers with register_exercise(op, 'topic:function')")
    _REGISTRY.setdefault(op, {})[_check_name(backend)] = target
    _resolved.pop(f"{op}/{backend}", None)


def register_exercise(op: str, ref: str) -> None:
    """Route ``op`` to the learner's ``topic:function`` (e.g. ``"stage1_kernels/softmax:softmax"``)."""
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(sorted(_REGISTRY))}")
    _EXERCISES[op] = ref
    _resolved.pop(f"{op}/exercises", None)


def ops() -> list[str]:
    return sorted(_REGISTRY)


def _import(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def implementation(op: str, backend: str | None = None) -> Callable:
    """The function that runs ``op`` under ``backend`` (default: the backend in force)."""
    backend = _check_name(backend) if backend else get_backend()
    key = f"{op}/{backend}"
    if key in _resolved:
        return _resolved[key]
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(sorted(_REGISTRY))}")
    if backend == "exercises":
        fallback = implementation(op, "triton")
        if op in _EXERCISES:
            from llm_course.grading.adapter import exercise

            fn = exercise(_EXERCISES[op], reference=fallback)
        else:
            fn = fallback
    else:
        if backend not in _REGISTRY[op]:
            raise NotImplementedError(f"op {op!r} has no {backend!r} implementation yet")
        fn = _import(_REGISTRY[op][backend])
    _resolved[key] = fn
    return fn


def dispatch(op: str, *args, **kwargs):
    """Call ``op`` with the backend in force."""
    return implementation(op)(*args, **kwargs)

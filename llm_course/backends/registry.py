"""The backend switch: one place that decides which implementation an op runs.

Every op the models use (``llm_course.ops.softmax``, ``rms_norm``, ``matmul``,
``attention``, ...) is declared once, in ``llm_course/ops.py``, with the
:func:`op` decorator: its name and signature (the decorated function), its
implementations, the learner's exercise that implements it, and its input check:

    @op(torch="norms:rms_norm", triton="rmsnorm:rms_norm",
        exercise="stage1_kernels/rmsnorm:rms_norm", check=checks.rms_norm)
    def rms_norm(x, weight, eps=1e-6):
        \"\"\"RMSNorm over the last dimension ...\"\"\"

``llm_course.ops.rms_norm(...)`` runs the check, then the backend's implementation.
An implementation that runs the check itself, so that a direct call of it is checked
too, is marked with :func:`checks_own_inputs`, and the check then runs once, not twice.

Each backend runs the same signature:

* ``"torch"``     -- the pure-PyTorch reference (``llm_course/backends/torch_ops/``);
* ``"triton"``    -- the Triton kernels (``llm_course/backends/triton_ops/``); without a
  GPU they run through the Triton interpreter;
* ``"exercises"`` -- the learner's own answers where an exercise exists and is done,
  the course's Triton kernel otherwise (the reference where an op has no kernel). An op
  that fuses several others (``add_rms_norm`` is ``add`` then ``rms_norm``) and has no
  exercise of its own runs as that composition (``llm_course/backends/composites.py``),
  so the learner's answers inside it still run. The answers come from an *implementation
  source* that another package registers with :func:`register_source` (the grading
  package does, for the course's ``exercises/``); the runtime itself never imports it.

Choose the backend, in order of precedence:

1. a context manager:   ``with use_backend("triton"): ...``
2. a global setting:    ``set_backend("triton")``
3. the environment:     ``LLM_COURSE_BACKEND=triton``
4. the default:         ``"torch"``

Implementations are ``"module:function"`` strings (the module relative to
``torch_ops`` or ``triton_ops``) imported on first use, so that ``import llm_course``
never imports a kernel module before the Triton interpreter is configured (see
``llm_course.device``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

BACKENDS = ("torch", "triton", "exercises")
ENV_BACKEND = "LLM_COURSE_BACKEND"

# where a relative "module:function" of each backend lives
PACKAGES = {"torch": "llm_course.backends.torch_ops", "triton": "llm_course.backends.triton_ops"}
# where a fused op's composition of other ops lives (what the "exercises" backend runs)
COMPOSITES = "llm_course.backends.composites"

# the module that declares the ops (imported on the first lookup, if nobody has yet)
DECLARATIONS = "llm_course.ops"

# backend -> the module that registers its implementation source when imported. A plugin,
# looked up only when that backend is used: the runtime works without it.
SOURCE_PLUGINS = {"exercises": "llm_course.grading.adapter"}


@dataclass
class OpSpec:
    """Everything about one op, declared once (see :func:`op`)."""

    name: str
    signature: inspect.Signature
    doc: str
    implementations: dict[str, str | Callable] = field(default_factory=dict)  # backend -> target
    exercise: str | None = None  # "topic:function" of the learner's answer, if any
    check: Callable | None = None  # runs before every backend, with the op's arguments
    autocast: bool = False  # a matrix product: under autocast, its inputs are cast first (see autocast_inputs)
    composite: str | None = None  # the function in composites.py that computes it from other ops


_OPS: dict[str, OpSpec] = {}
_SOURCES: dict[str, Callable[[str, Callable], Callable]] = {}
_global_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("llm_course_backend", default=None)
# The same choice as a plain global, read only while torch.compile traces a model: Dynamo in
# some PyTorch releases cannot trace ContextVar.get (a graph break at every op, then
# recompilations), but it can read a global and guard on it. Kept in step by use_backend.
_traced_backend: str | None = None
_resolved: dict[tuple[str, str], Callable] = {}


# --- declaring ops -------------------------------------------------------------------------


def op(
    *,
    torch: str | Callable,
    triton: str | Callable | None = None,
    exercise: str | None = None,
    check: Callable | None = None,
    autocast: bool = False,
    composite: str | None = None,
) -> Callable[[Callable], Callable]:
    """Declare the decorated function as an op; returns the function models call.

    ``torch`` and ``triton`` are ``"module:function"`` (e.g. ``"norms:rms_norm"``, in
    ``torch_ops`` or ``triton_ops``) or callables; ``exercise`` is the learner's
    ``"topic:function"`` (e.g. ``"stage1_kernels/rmsnorm:rms_norm"``); ``check`` is
    called with the op's arguments before any backend (``llm_course/backends/checks.py``);
    ``autocast=True`` marks a matrix product, whose inputs autocast's dtype applies to;
    ``composite`` names the function of ``composites.py`` that computes a fused op from
    the ops it fuses (the ``"exercises"`` backend runs it, so the learner's kernels run).
    The decorated function's body is not run: its signature and docstring are the op's.
    """

    def decorate(fn: Callable) -> Callable:
        spec = declare(fn.__name__, inspect.signature(fn), inspect.getdoc(fn) or "",
                       torch=torch, triton=triton, exercise=exercise, check=check, autocast=autocast,
                       composite=composite)  # fmt: skip

        @functools.wraps(fn)
        def run(*args, **kwargs):
            return _call(spec, args, kwargs)

        run.spec = spec
        return run

    return decorate


def checks_own_inputs(fn: Callable) -> Callable:
    """Mark an implementation that runs its op's whole check itself: the registry then skips its own.

    A Triton entry point such as ``triton_ops.layernorm.layer_norm`` is public: called
    directly, it must refuse a bad input as clearly as ``llm_course.ops.layer_norm`` does,
    so it runs the op's check (``llm_course/backends/checks.py``) and then its kernels'
    own (``triton_ops/checks.py``). Through ``llm_course.ops`` the op's check would then
    run twice; a check is host time at every call of every layer, so the entry point
    says, with this mark, that it needs no check before it.
    """
    fn.checks_own_inputs = True
    return fn


def declare(
    name: str,
    signature: inspect.Signature,
    doc: str = "",
    *,
    torch: str | Callable,
    triton: str | Callable | None = None,
    exercise: str | None = None,
    check: Callable | None = None,
    autocast: bool = False,
    composite: str | None = None,
) -> OpSpec:
    """Record an op (what :func:`op` does). Declaring a name twice is an error."""
    if name in _OPS:
        raise ValueError(f"op {name!r} is declared twice")
    if composite is not None and exercise is not None:
        raise ValueError(f"op {name!r}: an op with an exercise of its own needs no composite")
    impls = {"torch": torch} if triton is None else {"torch": torch, "triton": triton}
    spec = _OPS[name] = OpSpec(name, signature, doc, impls, exercise, check, autocast, composite)
    return spec


def autocast_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Under ``torch.autocast``, cast a matrix product's floating-point inputs to autocast's dtype.

    PyTorch's own ``F.linear`` and ``torch.matmul`` do this themselves, but autocast
    cannot see inside a kernel launched from a ``torch.autograd.Function``: without this
    cast a Triton ``linear`` would receive the float32 master weights and activations and
    multiply in float32, many times slower than bf16 on the tensor cores. The cast is an
    ordinary differentiable op, so the gradients still reach the float32 weights.

    For an implementation marked :func:`checks_own_inputs` the cast comes before the op's
    check, so the inputs may be bad ones: a tensor on the ``meta`` device (autocast has no
    state to ask for it) is left alone, for the check to refuse it by name.
    """
    import torch  # already imported by anything that runs an op

    first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    if first is None or first.device.type == "meta" or not torch.is_autocast_enabled(first.device.type):
        return args, kwargs
    dtype = torch.get_autocast_dtype(first.device.type)

    def cast(a):
        return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _spec(op: str) -> OpSpec:
    if op not in _OPS:
        importlib.import_module(DECLARATIONS)
    if op not in _OPS:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(sorted(_OPS))}")
    return _OPS[op]


def declared_ops() -> dict[str, OpSpec]:
    """Every declared op, by name."""
    importlib.import_module(DECLARATIONS)
    return dict(_OPS)


def ops() -> list[str]:
    """The names of the declared ops."""
    return sorted(declared_ops())


def register(op: str, backend: str, target: str | Callable) -> None:
    """Replace an op's implementation for a backend (``target``: a callable or ``"module:function"``)."""
    if _check_name(backend) == "exercises":
        raise ValueError("register exercise answers with register_exercise(op, 'topic:function')")
    _spec(op).implementations[backend] = target
    _resolved.pop((op, backend), None)


def register_exercise(op: str, ref: str) -> None:
    """Route ``op`` to the learner's ``topic:function`` (e.g. ``"stage1_kernels/softmax:softmax"``)."""
    _spec(op).exercise = ref
    _resolved.pop((op, "exercises"), None)


def register_source(backend: str, resolver: Callable[[str, Callable], Callable]) -> None:
    """Give ``backend`` (``"exercises"``) its implementation source.

    ``resolver(ref, fallback)`` receives an op's ``exercise`` reference and the
    course's implementation, and returns the function to run (the learner's, or
    ``fallback`` while the exercise is not done).
    """
    _SOURCES[_check_name(backend)] = resolver
    _forget_exercises()


def _source(backend: str) -> Callable[[str, Callable], Callable] | None:
    """The registered source, importing its plugin first if needed; None when the plugin is absent."""
    if backend not in _SOURCES and backend in SOURCE_PLUGINS:
        plugin = SOURCE_PLUGINS[backend]
        try:
            importlib.import_module(plugin)
        except ModuleNotFoundError as exc:  # the plugin (or its package) is not installed
            if not exc.name or not (plugin == exc.name or plugin.startswith(exc.name + ".")):
                raise
    return _SOURCES.get(backend)


# --- choosing the backend ------------------------------------------------------------------


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The backend in force here (context manager, then global, then $LLM_COURSE_BACKEND, then 'torch')."""
    import torch  # already imported by anything that runs an op

    context = _traced_backend if torch.compiler.is_compiling() else _context_backend.get()
    name = context or _global_backend or os.environ.get(ENV_BACKEND) or "torch"
    return _check_name(name)


def set_backend(name: str) -> None:
    """Set the backend for the whole process (a ``use_backend`` block still wins)."""
    global _global_backend
    _global_backend = _check_name(name)
    _forget_exercises()
    _resolve_all(name)


def _resolve_all(backend: str) -> None:
    """Import every op's implementation on ``backend`` now, on the host, once.

    ``torch.compile`` traces the ops' Python but cannot run an ``import`` of a module that is
    not loaded yet; looked up here first, the implementations are plain dictionary reads by
    the time it traces. A failure is left for the op's own call to report.
    """
    if backend not in PACKAGES:  # "exercises": the learner's files are read at each call
        return
    for name, spec in declared_ops().items():
        if backend in spec.implementations and (name, backend) not in _resolved:
            try:
                _resolve(name, backend)
            except Exception:  # noqa: BLE001 -- reported where the op is called
                pass


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run a block with another backend: ``with use_backend("triton"): y = ops.softmax(x)``."""
    global _traced_backend
    token = _context_backend.set(_check_name(name))
    outer, _traced_backend = _traced_backend, name
    _forget_exercises()
    _resolve_all(name)
    try:
        yield name
    finally:
        _context_backend.reset(token)
        _traced_backend = outer


def _forget_exercises() -> None:
    """Re-read the learner's files next time (they may have been edited)."""
    for key in [k for k in _resolved if k[1] == "exercises"]:
        del _resolved[key]


# --- finding and calling the implementation ----------------------------------------------------


def _import(target: str | Callable, package: str) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    if not module.startswith("llm_course."):
        module = f"{package}.{module}"
    return getattr(importlib.import_module(module), attr)


def implementation(op: str, backend: str | None = None) -> Callable:
    """The function that runs ``op`` under ``backend`` (default: the backend in force)."""
    return _resolve(op, _check_name(backend) if backend else get_backend())


def _resolve(op: str, backend: str) -> Callable:
    """:func:`implementation` for a checked backend name, imported on first use and remembered."""
    key = (op, backend)
    if key in _resolved:
        return _resolved[key]
    spec = _spec(op)
    if backend == "exercises" and spec.composite is not None and _source("exercises") is not None:
        fn = getattr(importlib.import_module(COMPOSITES), spec.composite)  # built from ops that have exercises
    elif backend == "exercises":
        fn = fallback = implementation(op, "triton" if "triton" in spec.implementations else "torch")
        if spec.exercise is not None:
            source = _source("exercises")
            if source is None:
                print(f"[exercise {spec.exercise}: no source of exercises is installed; using the course's kernel]")
            else:
                fn = source(spec.exercise, fallback)
    else:
        if backend not in spec.implementations:
            raise NotImplementedError(f"op {op!r} has no {backend!r} implementation yet")
        fn = _import(spec.implementations[backend], PACKAGES[backend])
    _resolved[key] = fn
    return fn


def dispatch(op: str, *args, **kwargs):
    """Call ``op`` with the backend in force (its check first), like ``llm_course.ops.<op>(...)``."""
    return _call(_spec(op), args, kwargs)


def _call(spec: OpSpec, args: tuple, kwargs: dict):
    """One call of an op: its check (unless the implementation runs it itself), autocast's cast, the implementation."""
    impl = implementation(spec.name)
    if spec.check is not None and not getattr(impl, "checks_own_inputs", False):
        spec.check(*args, **kwargs)
    if spec.autocast:
        args, kwargs = autocast_inputs(args, kwargs)
    return impl(*args, **kwargs)

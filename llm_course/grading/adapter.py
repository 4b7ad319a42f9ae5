"""The one adapter between graded tests (and notebooks) and the learner's code.

An *implementation directory* has the layout of ``exercises/``: one folder a
stage, one file a topic, e.g. ``stage0_tokens/bpe.py``. The same tests run
against any such directory:

* ``exercises`` -- the learner's copy (the default),
* ``solutions`` -- the reference answers,
* any other path with that layout (a learner's submission, say).

Pick one with ``pytest --impl ...``, ``llm-course grade --impl ...``, or the
environment variable ``LLM_COURSE_IMPL``.

Tests call :func:`load` (``load("stage0_tokens/bpe").merge``). Notebooks call
:func:`exercise`, which hands back the learner's function when it is written
and otherwise says so and falls back to the course's reference, so that a
fresh learner can run every notebook top to bottom.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import os
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Callable

from llm_course.backends.registry import register_source
from llm_course.paths import repo_root

ENV_IMPL = "LLM_COURSE_IMPL"
NAMED_IMPLS = ("exercises", "solutions")


def resolve_impl(impl: str | os.PathLike | None = None) -> Path:
    """Turn 'exercises', 'solutions', a path, or None ($LLM_COURSE_IMPL, else 'exercises') into a folder."""
    impl = impl or os.environ.get(ENV_IMPL) or "exercises"
    path = repo_root() / str(impl) if str(impl) in NAMED_IMPLS else Path(impl).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"implementation directory {str(impl)!r} not found; use 'exercises', 'solutions' "
            "or a folder with the same layout"
        )
    return path


def _module_name(root: Path, topic: str) -> str:
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    return f"_llm_course_impl_{tag}." + topic.replace("/", ".")


def load(topic: str, impl: str | os.PathLike | None = None) -> ModuleType:
    """Import ``<impl>/<topic>.py`` (e.g. ``load("stage0_tokens/bpe")``) and return the module.

    The module is re-imported when its file has changed, so a learner's edits
    are picked up without restarting the notebook kernel.
    """
    from llm_course.device import configure_triton

    root = resolve_impl(impl)
    topic = topic.removesuffix(".py")
    path = root / f"{topic}.py"
    if not path.is_file():
        raise FileNotFoundError(f"exercise file {topic}.py is missing from {root.name}/")
    name = _module_name(root, topic)
    cached = sys.modules.get(name)
    if cached is not None and getattr(cached, "__llm_course_mtime__", None) == path.stat().st_mtime_ns:
        return cached
    configure_triton()  # exercise files may define kernels: the interpreter must be on first
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__llm_course_mtime__ = path.stat().st_mtime_ns
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def is_stub(fn: Callable) -> bool:
    """True when ``fn``'s body (after its docstring) is only ``raise NotImplementedError(...)``."""
    fn = getattr(fn, "fn", fn)  # a @triton.jit kernel wraps the Python function as .fn
    try:
        src = textwrap.dedent(inspect.getsource(inspect.unwrap(fn)))
        node = ast.parse(src).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return False
    body = list(getattr(node, "body", []))
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


class NotCovered(NotImplementedError):
    """A case an exercise's kernels do not handle (an option, a head size): ``exercise()`` and the
    ``exercises`` backend then run the course's implementation for that call, as for a stub."""


def require_written(*kernels) -> None:
    """Raise NotImplementedError while any of these ``@triton.jit`` kernels is still a stub.

    Exercise launchers call it before launching, so that an unwritten kernel
    fails the same way on a GPU (where a ``raise`` inside a kernel is a
    compile error) as in the interpreter.
    """
    for k in kernels:
        if is_stub(k):
            name = getattr(getattr(k, "fn", k), "__name__", "kernel")
            raise NotImplementedError(f"the kernel {name} is not written yet")


def unwritten_kernels(fn: Callable) -> list[str]:
    """Names of the stub kernels that ``fn`` passes to :func:`require_written` (read from its source).

    Lets :func:`exercise` see that a given launcher is not usable yet without calling it.
    """
    fn = inspect.unwrap(fn)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return []
    names = [
        arg.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require_written"
        for arg in node.args
        if isinstance(arg, ast.Name)
    ]
    scope = getattr(fn, "__globals__", {})
    return [n for n in names if n in scope and is_stub(scope[n])]


def exercise(ref: str, reference: Callable, impl: str | os.PathLike | None = None) -> Callable:
    """The learner's ``topic:function`` if written, else ``reference``; prints which one is used.

    ``ref`` is ``"stage0_tokens/bpe:merge"``. The printed tag has the same shape
    either way (``[exercise stage0_tokens/bpe:merge: ...]``) so that notebook
    checks can compare outputs of a finished and an unfinished course.
    """
    topic, _, fname = ref.partition(":")
    try:
        module = load(topic, impl)
    except Exception as exc:  # a syntax error in the learner's file must not stop the notebook
        print(f"[exercise {ref}: could not be loaded ({type(exc).__name__}: {exc}); using the reference]")
        return reference
    fn = getattr(module, fname, None)
    if not callable(fn):
        print(f"[exercise {ref}: {topic}.py has no function {fname}() yet; using the reference]")
        return reference
    if is_stub(fn) or unwritten_kernels(fn):
        print(f"[exercise {ref}: not done yet; using the reference]")
        return reference
    print(f"[exercise {ref}: using your implementation]")

    @functools.wraps(fn)
    def learner_or_reference(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as exc:  # a part not written yet, or a case the exercise does not cover
            print(f"[exercise {ref}: {exc or 'part of it is not done yet'}; using the reference]")
            return reference(*args, **kwargs)

    return learner_or_reference


def _exercise_source(ref: str, fallback: Callable) -> Callable:
    """The ``exercises`` backend's source of implementations: the learner's function, or ``fallback``."""
    return exercise(ref, reference=fallback)


# The runtime never imports this package: it is the grading package that hands the
# learner's answers to the backend switch (``use_backend("exercises")``).
register_source("exercises", _exercise_source)

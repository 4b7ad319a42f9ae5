"""One place that decides the device and how Triton runs.

Everything in the course that needs a device asks :func:`get_device`; nothing
else in the package writes the string "cuda".

Triton has two modes:

* **compiled** -- a CUDA GPU is present: ``@triton.jit`` kernels compile to GPU code.
* **interpreter** -- no GPU: kernels run on the CPU through Triton's interpreter
  (``TRITON_INTERPRET=1``). Every exercise works this way, about a thousand times
  slower, so CPU examples use small sizes.

The interpreter has to be switched on *before* the module that defines a kernel
is imported, because ``@triton.jit`` decides at decoration time. That is why
``import llm_course`` never imports a kernel module, and why every module that
defines kernels starts with::

    from llm_course.device import configure_triton
    configure_triton()
    import triton

The interpreter's traps, handled here so learners don't discover them the hard way:

* bfloat16 silently computes zeros -> :func:`check_triton_dtype` raises a clear error.
* ``@triton.autotune`` with several configs fails -> :func:`autotune_configs` keeps one.
* ``triton.testing.do_bench`` fails -> use :func:`llm_course.measure.timer.benchmark`.
"""

from __future__ import annotations

import os
import sys

import torch

ENV_DEVICE = "LLM_COURSE_DEVICE"  # force a device, e.g. LLM_COURSE_DEVICE=cpu on a GPU box
ENV_INTERPRET = "TRITON_INTERPRET"

_KERNEL_MODULES_SEEN: list[str] = []  # modules that called configure_triton(), in order


def get_device(prefer: str | None = None) -> torch.device:
    """The device the course runs on: ``prefer``, else $LLM_COURSE_DEVICE, else a CUDA GPU, else the CPU."""
    name = prefer or os.environ.get(ENV_DEVICE)
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} was asked for (argument or ${ENV_DEVICE}) but torch sees no CUDA GPU; "
                "unset it to run on the CPU"
            )
        return dev
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# asked once: every kernel launch asks, and the answer does not change (a plain list, not
# functools.cache: torch.compile traces the input checks that ask, and cannot trace a cache wrapper)
_HAS_GPU: list[bool] = []


def has_gpu() -> bool:
    """True when Triton kernels can be compiled for a GPU here."""
    if not _HAS_GPU:
        _HAS_GPU.append(torch.cuda.is_available())
    return _HAS_GPU[0]


def is_gpu(device: torch.device | str | None) -> bool:
    """True when ``device`` (a torch.device, a string, or a tensor's ``.device``) is a CUDA GPU."""
    return device is not None and torch.device(device).type == "cuda"


def host_can_read(t: torch.Tensor) -> bool:
    """May the host read ``t``'s values now (``int(t.max())``, ``bool(t.all())``)?

    Not while ``torch.compile`` traces (the values do not exist yet) nor while a CUDA graph is
    captured (reading would synchronize, which a capture forbids). Value checks that guard
    against bad input ask this first and are left out there. ``is_compiling`` is asked first:
    torch.compile cannot trace the capture query.
    """
    if torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for all queued work on ``device`` (a no-op on the CPU, where work is synchronous)."""
    dev = torch.device(device) if device is not None else get_device()
    if is_gpu(dev):
        torch.cuda.synchronize(dev)


def _choose_interpreter() -> None:
    """No GPU: set TRITON_INTERPRET=1, which Triton reads once, when ``triton.language`` is imported."""
    if not has_gpu() and os.environ.get(ENV_INTERPRET, "0") in ("", "0"):
        os.environ[ENV_INTERPRET] = "1"


def _check_triton_not_imported_compiled() -> None:
    """Triton's own helpers (``tl.sum``, ``tl.max``, ...) are made interpreted or compiled when
    ``triton.language`` is first imported. If something imported it before the interpreter was
    switched on (``torch._dynamo`` does, e.g. on an optimizer's first step), every kernel that
    calls them fails deep in Triton; say so here instead."""
    language = sys.modules.get("triton.language")
    if language is None or not _interpreter_from_env():  # the variable itself: it may have been set just now
        return
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(getattr(language, "sum", None), InterpretedFunction):
        raise RuntimeError(
            "Triton was imported in compiled mode before llm_course could switch it to the CPU "
            "interpreter (something, such as torch._dynamo or torch.compile, imported triton first). "
            "Import llm_course before anything else, or set TRITON_INTERPRET=1 before starting Python."
        )


def configure_triton() -> str:
    """Switch Triton to the interpreter when there is no GPU; return the mode.

    Call it before ``import triton`` in any module that defines kernels. It is
    idempotent, and it never switches the interpreter *off* if the user set it.
    """
    _choose_interpreter()
    _check_triton_not_imported_compiled()
    caller = sys._getframe(1).f_globals.get("__name__", "?")
    if caller not in _KERNEL_MODULES_SEEN:
        _KERNEL_MODULES_SEEN.append(caller)
    return triton_mode()


def triton_mode() -> str:
    """'compiled', 'interpreter', or 'unavailable' (Triton not installed)."""
    try:
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "unavailable"
    except (ImportError, ValueError):
        return "unavailable"
    return "interpreter" if is_interpreter() else "compiled"


_INTERPRETER_FIXED: list[bool] = []  # the answer, once Triton has read the variable


def is_interpreter() -> bool:
    """True when Triton kernels run (or, once configured, will run) through the CPU interpreter.

    Every op call asks this (a bfloat16 check, a launch setting). Reading the environment
    costs the host microseconds; once ``triton.language`` is imported, Triton has read the
    variable and the mode cannot change any more, so the answer is kept from then on.
    """
    if _INTERPRETER_FIXED:
        return _INTERPRETER_FIXED[0]
    answer = _interpreter_from_env()
    if "triton.language" in sys.modules:
        _INTERPRETER_FIXED.append(answer)
    return answer


def _interpreter_from_env() -> bool:
    return os.environ.get(ENV_INTERPRET, "0") not in ("", "0") or not has_gpu()


def check_triton_dtype(op: str, *tensors: torch.Tensor) -> None:
    """Refuse bfloat16 under the interpreter, where it silently computes zeros."""
    if not is_interpreter():
        return
    for t in tensors:
        if t is not None and t.dtype == torch.bfloat16:
            raise TypeError(
                f"{op}: bfloat16 is not supported by the Triton interpreter (it silently gives zeros); "
                "on the CPU use float32 or float16, or run on a GPU"
            )


def autotune_configs(gpu_configs: list, cpu_config) -> list:
    """Several autotune configs on a GPU, exactly one under the interpreter (which rejects more)."""
    return [cpu_config] if is_interpreter() or not has_gpu() else list(gpu_configs)


def describe() -> dict[str, str]:
    """Facts about this machine that the doctor and the benchmark files record."""
    import platform

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(get_device()),
        "triton_mode": triton_mode(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    if has_gpu():
        props = torch.cuda.get_device_properties(get_device())
        info["gpu"] = props.name
        info["gpu_memory_gib"] = f"{props.total_memory / 2**30:.0f}"
        info["cuda"] = str(torch.version.cuda)
    else:
        info["gpu"] = "none"
        info["cpu_threads"] = str(torch.get_num_threads())
    return info


# Chosen on import, before anything (torch._dynamo, torch.compile, an optimizer's first step)
# can import Triton in compiled mode: ``import llm_course`` is enough to make kernels run on a CPU.
_choose_interpreter()

"""The environment check: ``llm-course doctor``, and the first cell of notebook 00.

It prints the device, the versions, Triton's mode and what will be slow, and
says what to do when something is missing. It never fails hard: a learner
without a GPU or without Triton can still run most of the course.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

from llm_course import device

PACKAGES = ["torch", "triton", "numpy", "matplotlib", "tokenizers", "datasets", "yaml"]
OPTIONAL = {"jupyterlab": "notebooks", "pytest": "tests", "nbval": "notebook tests"}


def _version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        with warnings.catch_warnings():  # some packages warn on import (with local paths): keep the report clean
            warnings.simplefilter("ignore")
            return getattr(importlib.import_module(name), "__version__", "installed")
    except Exception as exc:  # a broken install: say so rather than crash the check
        return f"broken ({type(exc).__name__}: {exc})"


def check() -> list[str]:
    """Return the report's lines (also used by tests)."""
    info = device.describe()
    lines = ["llm_course environment check", ""]
    lines.append(f"  python        {info['python']}")
    lines.append(f"  device        {info['device']}" + (f" ({info['gpu']})" if info["gpu"] != "none" else ""))
    lines.append(f"  triton mode   {info['triton_mode']}")
    missing = []
    for name in PACKAGES:
        v = _version(name)
        lines.append(f"  {name:<13} {v or 'MISSING'}")
        if v is None:
            missing.append(name)
    for name, why in OPTIONAL.items():
        v = _version(name)
        lines.append(f"  {name:<13} {v or f'not installed (needed for {why})'}")
    lines.append("")
    mode = info["triton_mode"]
    if mode == "interpreter":
        lines += [
            "No GPU: Triton kernels run through the Triton interpreter (TRITON_INTERPRET=1).",
            "  - they are about 1000x slower than on a GPU: the notebooks use small sizes on the CPU;",
            "  - bfloat16 is refused there (the interpreter would silently compute zeros): use float32 or float16;",
            "  - autotuning keeps one configuration, and timings use llm_course.measure, not triton.testing.do_bench.",
            "Everything graded runs on the CPU; GPU-only speed measurements are skipped.",
        ]
    elif mode == "compiled":
        lines.append("GPU found: Triton kernels compile for it; bfloat16 and autotuning work.")
    else:
        lines.append("Triton is not installed: the 'triton' backend and stage 1-2 kernels will not run.")
    if missing:
        lines.append(f"Missing: {', '.join(missing)}. Run `make lab` (or `pip install -e '.[dev]'`) from the repo.")
    else:
        lines.append("All required packages are present.")
    return lines


def main() -> int:
    print("\n".join(check()))
    return 0

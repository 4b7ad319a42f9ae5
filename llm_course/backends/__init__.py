"""Backends: the pure-PyTorch references (``torch_ops``), the Triton kernels
(``triton_ops``), the input checks every backend shares (``checks``), and the
registry that switches between them (``registry``; the ops themselves are
declared in ``llm_course/ops.py``).

Import nothing from ``triton_ops`` here: kernel modules are imported on first
use, after ``llm_course.device.configure_triton()`` has chosen Triton's mode.
"""

from llm_course.backends.registry import (
    BACKENDS,
    declared_ops,
    dispatch,
    get_backend,
    implementation,
    register,
    register_exercise,
    register_source,
    set_backend,
    use_backend,
)

__all__ = [
    "BACKENDS",
    "declared_ops",
    "dispatch",
    "get_backend",
    "implementation",
    "register",
    "register_exercise",
    "register_source",
    "set_backend",
    "use_backend",
]

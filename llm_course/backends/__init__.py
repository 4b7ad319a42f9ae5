"""Backends: the pure-PyTorch references (``torch_ops``), the Triton kernels
(``triton_ops``), and the registry that switches between them.

Import nothing from ``triton_ops`` here: kernel modules are imported on first
use, after ``llm_course.device.configure_triton()`` has chosen Triton's mode.
"""

from llm_course.backends.registry import (
    BACKENDS,
    dispatch,
    get_backend,
    implementation,
    register,
    register_exercise,
    set_backend,
    use_backend,
)

__all__ = [
    "BACKENDS",
    "dispatch",
    "get_backend",
    "implementation",
    "register",
    "register_exercise",
    "set_backend",
    "use_backend",
]

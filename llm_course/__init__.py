"""llm_course: build an LLM from scratch, from PyTorch reference code down to Triton kernels.

This package grows stage by stage; ``llm_course/README.md`` maps its modules.
Importing it is cheap and imports no Triton kernel: kernel modules load on
first use, after ``llm_course.device`` has chosen Triton's mode.
"""

from llm_course.device import get_device

__version__ = "0.1.0"
__all__ = ["get_device", "__version__"]

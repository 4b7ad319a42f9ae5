"""Old name of :mod:`llm_course.backends.triton_ops.checks`, kept while exercise files still import it."""

from llm_course.backends.triton_ops.checks import FLOATS, check_same_device, check_same_dtype, check_tensor  # noqa: F401

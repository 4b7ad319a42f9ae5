"""Profiling: which ops and kernels a piece of code, or a whole training step, spends its time in.

* ``profiler.py``      -- :class:`profile_region`: a table of the top ops of a block, a Chrome trace
* ``training_step.py`` -- :func:`profile_training_step`: whole training steps of a config and backend
* ``annotate.py``      -- :func:`annotate_ops`: each course op marked in the profile, its FLOPs and bytes
* ``events.py``        -- each kernel placed on its op, phase (forward, backward, optimizer) and category
* ``categories.py``    -- :func:`classify_kernel`: matmul, attention, norms, elementwise, loss, ...
* ``tables.py``        -- the kernel, category and op tables; kernels and ops on the roofline
* ``report.py``        -- CSV, JSON, charts, printed reports, backends side by side
* ``cli.py``           -- ``llm-course profile``
"""

from llm_course.profiling.annotate import OpCall, annotate_ops
from llm_course.profiling.categories import CATEGORIES, categorize, classify_kernel
from llm_course.profiling.profiler import ProfileResult, ProfileRow, profile_region
from llm_course.profiling.training_step import StepProfile, profile_training_step

__all__ = [
    "CATEGORIES", "OpCall", "ProfileResult", "ProfileRow", "StepProfile", "annotate_ops", "categorize",
    "classify_kernel", "profile_region", "profile_training_step",
]  # fmt: skip

"""Triton kernels, one op per file, in three layers (as in Triton's tutorials and Liger-Kernel):

1. the ``@triton.jit`` kernel,
2. its launcher (allocates outputs, picks the grid),
3. a thin ``torch.autograd.Function`` where the op has a backward,

and last the function with the op's signature (declared in ``llm_course/ops.py``), which
the backend switch calls. That function checks its inputs once, with the public helpers
of ``checks.py``; the launchers below it trust them (a launcher called on its own says in
its docstring what to check first).

Shared by several kernels: ``checks.py`` (what a kernel needs of its inputs),
``launch.py`` (block sizes, warps, the (M, N) rows view, the programs of a backward
that reduces over rows) and ``flash_common.py`` (FlashAttention's forward and backward).
Every module here starts with ``configure_triton()`` before ``import triton``.
"""

"""Triton kernels, one op per file, in three layers (as in Triton's tutorials and Liger-Kernel):

1. the ``@triton.jit`` kernel,
2. its launcher (allocates outputs, picks the grid),
3. a thin ``torch.autograd.Function`` where the op has a backward,

and last the function with the registry's signature, which the backend switch calls.
Every module here starts with ``configure_triton()`` before ``import triton``.
"""

"""Pure-PyTorch references: the readable definition of every op, and what the
Triton kernels are tested against. One op (or family) per file."""

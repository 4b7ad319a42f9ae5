"""Launch settings that several kernels choose the same way: public, for the course's kernels and the exercises.

Row-wise kernels (softmax, RMSNorm, LayerNorm) give one program a whole row of
an (M, N) view of their input, held in registers as one block:

    rows = as_rows(x)                                   # (..., N) -> (M, N), last stride 1, no copy if possible
    y = from_rows(out_rows, x.shape)                    # (M, N) -> (..., N), the way back
    block, num_warps = block_config(OP, N, MAX_FUSED_SIZE)   # a power of two >= N; 4, 8 or 16 warps
    launch(kernel, (M,), rows, ..., BLOCK_SIZE=block, num_warps=num_warps)   # launch_cache.py: kernel[(M,)](...), cheaper

Kernels whose backward reduces over rows (a norm's dweight) launch about as many
programs as the GPU runs at once, each looping over a block of rows:

    programs, rows_per_program = backward_programs(M, num_warps, x.device)
    stages = backward_stages(block, x.element_size())

A vector or a gradient that a kernel reads with a last-dim stride of 1, copied only if needed:

    w = last_dim_contiguous(weight)

Settings that ask the device (its number of SMs, its compute capability) are cached: they cost nothing
after the first call. The host-side arithmetic is plain Python (``cdiv``,
``next_power_of_2`` below): Triton's helpers of the same names are made to be
called inside kernels too, and cost microseconds each when called from the host.
"""

from __future__ import annotations

import torch

from llm_course.device import is_gpu, is_interpreter


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints: how many blocks of b cover a."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def num_warps_for(block_size: int) -> int:
    """More threads for longer rows, so that each thread holds 8-16 values of the row."""
    if block_size >= 8192:
        return 16
    if block_size >= 4096:
        return 8
    return 4


def block_config(op: str, n_cols: int, max_size: int) -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) for rows of ``n_cols`` kept whole in registers.

    BLOCK_SIZE is the smallest power of two >= n_cols (``tl.arange`` needs a power of
    two; a mask switches off the extra lanes). Rows longer than ``max_size`` do not
    fit in registers: a clear error naming ``op``.
    """
    block = next_power_of_2(n_cols)
    if block > max_size:
        raise ValueError(f"{op}: rows of {n_cols} elements are too long (at most {max_size})")
    return block, num_warps_for(block)


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) with a last-dim stride of 1, without a copy when the layout allows."""
    return last_dim_contiguous(t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t)


def from_rows(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(M, N) -> ``shape``, the inverse of :func:`as_rows`: no view at all when ``shape`` is already 2-D.

    A view is a PyTorch call (microseconds of the host's time); a 2-D input's rows are the input itself.
    """
    return t if len(shape) == 2 else t.view(shape)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a last-dim stride of 1, as the kernels read rows and vectors: copied only if needed.

    Asking the stride is a Python attribute; ``.contiguous()`` is a PyTorch call, which costs
    the host microseconds even when it returns its input, at every layer of every step.
    """
    return t if t.stride(-1) == 1 else t.contiguous()


_GPU_FACTS: dict[int, tuple[int, int, int]] = {}  # device index -> (SMs, compute capability major, minor)


def _gpu_facts(device: torch.device) -> tuple[int, int, int]:
    """What the launch settings ask of a GPU, asked once per device (``device.index`` None: the current one).

    A plain dict of ints, not ``functools.lru_cache``: ``torch.compile`` traces through this when
    it compiles a model that launches the course's kernels, and cannot trace an lru_cache wrapper.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _GPU_FACTS:
        props = torch.cuda.get_device_properties(index)
        _GPU_FACTS[index] = (props.multi_processor_count, props.major, props.minor)
    return _GPU_FACTS[index]


def sm_count(device: torch.device) -> int:
    """The number of streaming multiprocessors of a GPU."""
    return _gpu_facts(device)[0]


def compute_capability(device: torch.device) -> tuple[int, int]:
    """A GPU's compute capability, e.g. (9, 0) for Hopper (H100, H200)."""
    return _gpu_facts(device)[1:]


def backward_programs(n_rows: int, num_warps: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows_per_program) for a row-reducing backward: enough programs to fill the GPU, each looping over rows.

    About 16 warps per SM: 2 programs of 8 warps, 4 of 4, 1 of 16. Fewer in the
    interpreter, where programs run one after another anyway. The rows are dealt out
    evenly, and no program is left without rows.
    """
    if is_interpreter() or not is_gpu(device):
        most = 4
    else:
        most = sm_count(device) * max(1, 16 // num_warps)
    rows_per_program = max(1, cdiv(n_rows, max(1, min(n_rows, most))))
    return cdiv(n_rows, rows_per_program), rows_per_program


def backward_stages(block_size: int, element_size: int) -> int:
    """How many rows a row-reducing backward loop keeps in flight (``tl.range(..., num_stages=...)``).

    With 3 stages the compiler loads the next two rows of x and dy into shared memory
    while the current one is computed: more bytes in flight, so memory latency is
    hidden even with few programs per SM. Only when two rows of x and dy fit in 64 KiB.
    """
    return 3 if 4 * block_size * element_size <= 64 * 1024 else 1

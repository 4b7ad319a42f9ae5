"""Data-parallel training (DDP): N processes, one model copy each, gradients averaged.

Launch with ``torchrun --nproc_per_node N -m llm_course.cli pretrain --config ...`` (or
``scripts/run_pretrain.sh``): torchrun starts N processes and gives each the environment
variables RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR/MASTER_PORT to meet at).
:func:`init_distributed` reads them; without them the run is one ordinary process.

Each rank reads its own part of the data, runs forward and backward on it, and
``DistributedDataParallel`` all-reduces (averages) the gradients during backward, so
every rank takes the same optimizer step: the same as one process with a batch N times
larger. Rank 0 alone logs and saves. Backend: NCCL between GPUs, gloo on the CPU.

**Sharded data parallel (FSDP2)**, ``parallelism: fsdp`` in the train config: every rank
still reads its own data and all ranks take the same step, but no rank holds the whole
model. :func:`wrap_model` calls PyTorch's ``fully_shard`` on each transformer block, then
on the root module (the embeddings, the final norm, the tied ``lm_head``): each parameter
becomes a ``DTensor`` of which rank r keeps the r-th slice of dim 0. A block's forward
first all-gathers its full weights, runs, and frees them again; backward does the same
and reduce-scatters the gradients, so each rank ends with the (averaged) gradient of its
own slice, and AdamW keeps moments only for that slice. Memory per rank for parameters,
gradients and optimizer state is divided by the number of ranks; the price is the
all-gathers (about 1.5x the communication of DDP). Sharding per block lets the all-gather
of block i+1 overlap with the compute of block i.

With ``precision: bf16`` the blocks compute in bfloat16 (``MixedPrecisionPolicy``:
parameters gathered in bf16, so the all-gathers move half the bytes) while the sharded
master weights, the optimizer state and the gradient reduction stay fp32
(``reduce_dtype=float32``: summing many ranks' gradients in bf16 would lose bits).
``fp16`` is not offered with FSDP (its GradScaler does not handle sharded gradients here):
use bf16. With one process ``ddp`` and ``fsdp`` both mean: no wrapping at all.

Gradient accumulation: the micro-batches before the last skip the gradient all-reduce
(DDP's ``no_sync()``) or reduce-scatter (FSDP's ``set_requires_gradient_sync(False)``);
:func:`gradient_sync` hides the difference.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun set up (or none): rank, world size and this rank's device."""
    from llm_course.device import get_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = get_device(device)
    if world <= 1:
        return DistInfo(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_model(model: torch.nn.Module, info: DistInfo, parallelism: str = "ddp",
               precision: str = "fp32") -> torch.nn.Module:  # fmt: skip
    """``model`` ready for ``info.world_size`` processes: as it is with one, in
    DistributedDataParallel (``ddp``), or sharded in place with FSDP2 (``fsdp``, see the module
    docstring; the same module object is returned, its parameters now DTensors: build the
    optimizer after this call)."""
    if parallelism not in ("ddp", "fsdp"):
        raise ValueError(f"wrap_model: parallelism={parallelism!r} must be 'ddp' or 'fsdp'")
    if not info.enabled:
        return model
    if parallelism == "fsdp":
        return shard_model(model, precision)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a model: the members of its ``nn.ModuleList`` (GPT-2's
    ``transformer.h``, Qwen2's ``model.layers``): FSDP's unit of sharding."""
    return [block for m in model.modules() if isinstance(m, torch.nn.ModuleList) for block in m]


def shard_model(model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    """FSDP2: ``fully_shard`` every transformer block, then the root (embeddings, final norm,
    the output layer, tied to the embedding or not: a tied weight is one Parameter of the root,
    sharded once). Call it on every rank with the same (identically initialised) model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if precision == "fp16":
        raise ValueError("parallelism: fsdp does not support precision: fp16 (its GradScaler does not handle "
                         "sharded gradients here); use precision: bf16")  # fmt: skip
    mp = MixedPrecisionPolicy()  # fp32: compute and reduce in the parameters' dtype
    if precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"shard_model: {type(model).__name__} has no nn.ModuleList of blocks to shard")
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)  # the rest: embeddings, final norm, lm_head
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` (its parameters are DTensors)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing can be sharded (and importing
    return fsdp is not None and isinstance(model, getattr(fsdp, "FSDPModule", ()))  # it takes seconds)


def gradient_sync(model: torch.nn.Module, info: DistInfo, sync: bool):
    """A context for one micro-batch's backward: with ``sync=False`` (every micro-batch of a step
    but the last) the gradients only accumulate locally; the last one then reduces the sum.
    DDP: ``model.no_sync()``; FSDP2: ``set_requires_gradient_sync(sync)`` (the gradients of the
    skipped micro-batches stay unsharded, full size, until the last one: more memory, less traffic)."""
    if not info.enabled:
        return contextlib.nullcontext()
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else model.no_sync()


def to_local_scalar(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (replicated) DTensor, e.g. the gradient norm of sharded gradients."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of ``x`` over all ranks (``x`` itself with one rank)."""
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_objects(obj, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (a picklable object per rank)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

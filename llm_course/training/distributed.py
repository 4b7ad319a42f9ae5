"""Data-parallel training (DDP): N processes, one model copy each, gradients averaged.

Launch with ``torchrun --nproc_per_node N -m llm_course.cli pretrain --config ...`` (or
``scripts/run_pretrain.sh``): torchrun starts N processes and gives each the environment
variables RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR/MASTER_PORT to meet at).
:func:`init_distributed` reads them; without them the run is one ordinary process.

Each rank reads its own part of the data, runs forward and backward on it, and
``DistributedDataParallel`` all-reduces (averages) the gradients during backward, so
every rank takes the same optimizer step: the same as one process with a batch N times
larger. Rank 0 alone logs and saves. Backend: NCCL between GPUs, gloo on the CPU.
"""

from __future__ import annotations

import os
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


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks, else as it is."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


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

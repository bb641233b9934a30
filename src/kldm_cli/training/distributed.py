"""Multi-process training (``torchrun``): where this process sits, the process group, and the
few collectives the trainer needs. Every function is a no-op (or the identity) in a single
process, so the trainer reads the same with one process or several."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from kldm_cli.device import resolve_device
from kldm_cli.launch import DistributedInfo, distributed_from_env

#: How long a rank waits for the others (rank 0 validating, writing checkpoints) before failing.
DISTRIBUTED_TIMEOUT = timedelta(minutes=60)


def is_distributed() -> bool:
    """Whether a process group is up (this process is one of several)."""
    return dist.is_available() and dist.is_initialized()


def join_process_group(device: str) -> tuple[DistributedInfo, bool]:
    """Join (or create) the process group of a torchrun launch; rank 0 of 1 otherwise.

    ``device`` is the ``--device`` option. Returns where this process sits and whether this call
    created the group (its creator must destroy it, see :func:`leave_process_group`).
    """
    if is_distributed():  # set up by the caller
        env = distributed_from_env()
        local_rank = env.local_rank if env else dist.get_rank()
        return DistributedInfo(dist.get_rank(), local_rank, dist.get_world_size()), False
    info = distributed_from_env()
    if info is None:
        return DistributedInfo(), False
    if not dist.is_available():
        raise ValueError("launched by torchrun, but this torch build has no torch.distributed")
    local_device = resolve_device(device, info.local_rank)
    if local_device.type == "cuda":
        torch.cuda.set_device(local_device)
    dist.init_process_group(
        backend="nccl" if local_device.type == "cuda" else "gloo",
        timeout=DISTRIBUTED_TIMEOUT,
        **({"device_id": local_device} if local_device.type == "cuda" else {}),
    )
    return info, True


def leave_process_group() -> None:
    """Destroy the process group, if there is one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(device: torch.device) -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()


@contextmanager
def main_first(info: DistributedInfo, device: torch.device) -> Iterator[None]:
    """Rank 0 runs the block first, then the other ranks (a no-op in a single process)."""
    if not info.is_main:
        barrier(device)
    yield
    if info.is_main:
        barrier(device)


def comm_device(device: torch.device) -> torch.device:
    """Where collectives run: the GPU under NCCL, the CPU under Gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def wrap_ddp(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` in :class:`~torch.nn.parallel.DistributedDataParallel` when distributed."""
    if not is_distributed():
        return network
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def gather_generator_states(
    generator: torch.Generator, device: torch.device, world_size: int
) -> list[Tensor]:
    """Every rank's generator state, on every rank (empty list in a single process)."""
    if not is_distributed():
        return []
    state = generator.get_state().to(comm_device(device))
    states = [torch.empty_like(state) for _ in range(world_size)]
    dist.all_gather(states, state)
    return [s.cpu() for s in states]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank once ``flag`` is true on any rank."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=comm_device(device))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(values: Tensor, device: torch.device, world_size: int) -> Tensor:
    """The average of ``values`` over ranks (``values`` itself in a single process)."""
    if not is_distributed():
        return values
    values = values.to(comm_device(device), copy=True)  # all_reduce works in place
    dist.all_reduce(values)
    return values / world_size

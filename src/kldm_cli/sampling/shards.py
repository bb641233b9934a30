"""Sampling over several processes: ``torchrun --nproc-per-node K kldm generate ...``.

The batches of a run's plan are dealt round-robin over the ranks (batch ``b`` to rank
``b % K``); every batch keeps its own seed-derived generator, so the files of a K-process run are
exactly those of a one-process run, each sample index written by exactly one rank. A rerun with
``--resume`` (with any K) skips the batches already written. The processes meet only at two
barriers (Gloo, CPU): after every rank has checked the output folder, and at the end, when rank 0
reads back what the others wrote.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

#: How long a rank waits for the others to finish checking the output folder.
START_TIMEOUT = datetime.timedelta(minutes=10)
#: How long rank 0 waits for the others to finish sampling.
END_TIMEOUT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class Shard:
    """This process's part of a run: rank ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def owns(self, batch_number: int) -> bool:
        """Whether this process samples batch ``batch_number`` of the plan."""
        return batch_number % self.world_size == self.rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard:
    """The shard of a ``torchrun`` launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), else the
    whole run (rank 0 of 1). Raises ``ValueError`` for an inconsistent environment."""
    from kldm_cli.launch import distributed_from_env

    info = distributed_from_env(environ)
    return Shard() if info is None else Shard(info.rank, info.world_size, info.local_rank)


@contextmanager
def process_group(shard: Shard) -> Iterator[None]:
    """Join a Gloo process group for ``shard`` (nothing for one process); leave it after."""
    import torch.distributed as dist

    if shard.world_size == 1 or dist.is_initialized():
        yield
        return
    if not dist.is_available():
        raise ValueError("launched by torchrun, but this torch build has no torch.distributed")
    dist.init_process_group(backend="gloo", timeout=END_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(shard: Shard, timeout: datetime.timedelta = START_TIMEOUT) -> None:
    """Wait for every rank (nothing for one process)."""
    if shard.world_size > 1:
        import torch.distributed as dist

        dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)

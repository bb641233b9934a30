"""Where this process sits in a ``torchrun`` launch, read from torchrun's environment variables.

Shared by multi-process training (:mod:`kldm_cli.training.distributed`) and sharded generation
(:mod:`kldm_cli.sampling.shards`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in a ``torchrun`` launch (rank 0 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env(environ: Mapping[str, str] | None = None) -> DistributedInfo | None:
    """The launch described by ``torchrun``'s variables, or None when not launched by it.

    ``WORLD_SIZE`` marks a launch; ``RANK`` is then required, ``LOCAL_RANK`` defaults to it.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "missing"))
        local_rank = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK/WORLD_SIZE are not all integers "
            f"(WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}, "
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r}); launch with torchrun"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent launch: RANK={rank}, WORLD_SIZE={world_size}")
    return DistributedInfo(rank=rank, local_rank=local_rank, world_size=world_size)

"""The training set as the trainer sees it: which records are used (atom-count limit, skipped
rows), packed on the device, and the order of every epoch (the same on every rank, sharded)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kldm_cli.config import KLDMConfig
from kldm_cli.data.batch import CrystalBatch, batch_index_from_num_atoms, fully_connected_edges
from kldm_cli.data.records import CrystalRecord
from kldm_cli.training.options import CHECKPOINT_NAME, TrainOptions

#: Without ``--max-atoms``, crystals with more atoms are left out (with a note): the network is
#: fully connected, so memory and time grow as atoms² per crystal, and one outlier would set the
#: model's ``max_atoms``.
DEFAULT_MAX_ATOMS = 100
#: Skipped rows named one by one (``kldm data stats`` lists them all).
SKIPPED_SHOWN = 3


def skipped_notes(skipped: Sequence[Any], data: Path | str) -> list[str]:
    """Notes naming the first :data:`SKIPPED_SHOWN` unusable rows (location and reason)."""
    if not skipped:
        return []
    notes = [f"skipped {row.location}: {row.reason}" for row in skipped[:SKIPPED_SHOWN]]
    if len(skipped) > SKIPPED_SHOWN:
        notes.append(
            f"... and {len(skipped) - SKIPPED_SHOWN} more skipped rows "
            f"(kldm data stats {data} lists them all)"
        )
    return notes


def select_by_atoms(
    records: Sequence[CrystalRecord], options: TrainOptions
) -> tuple[list[CrystalRecord], str | None]:
    """The records with at most ``--max-atoms`` atoms, and a note when the default limit
    (:data:`DEFAULT_MAX_ATOMS`, or the ``max_atoms`` of the run being resumed) left some out.

    Raises ``ValueError`` when none is left, saying how to raise the limit.
    """
    limit = options.max_atoms
    if limit is None:
        saved = Path(options.out) / "config.json"
        if (Path(options.out) / CHECKPOINT_NAME).exists() and saved.exists():
            limit = KLDMConfig.load(saved).max_atoms
        else:
            limit = DEFAULT_MAX_ATOMS
    kept = [r for r in records if r.num_atoms <= limit]
    largest = max((r.num_atoms for r in records), default=0)
    if not kept:
        raise ValueError(
            f"{options.data}: no structure has at most {limit} atoms (largest: {largest}); "
            f"pass --max-atoms {largest} to train on them"
        )
    note = None
    if len(kept) < len(records) and options.max_atoms is None:
        note = (
            f"left out {len(records) - len(kept)} crystal(s) with more than {limit} atoms "
            f"(largest: {largest}); pass --max-atoms {largest} to train on them (memory and "
            "time grow as atoms² per crystal)"
        )
    return kept, note


def epoch_order(num_records: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so resume replays it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_records, generator=generator)


def shard_order(order: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s share of an epoch's order ``[R]``: every ``world_size``-th index.

    The order is first padded to a multiple of ``world_size`` by repeating its first indices
    (as ``DistributedSampler`` does), so every rank gets ``ceil(R / world_size)`` indices and
    takes the same number of steps. The per-rank batches of step ``p`` together are the
    contiguous chunk ``p`` of the (padded) order, of ``batch_size * world_size`` crystals.
    ``world_size == 1`` returns ``order`` unchanged.
    """
    if world_size == 1:
        return order
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    padding = (-len(order)) % world_size
    if padding:
        repeats = math.ceil(padding / len(order))
        order = torch.cat([order, order.repeat(repeats)[:padding]])
    return order[rank::world_size]


def steps_per_epoch(num_records: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch: batches in one rank's shard."""
    return math.ceil(math.ceil(num_records / world_size) / batch_size)


class PackedCrystals:
    """A dataset as flat tensors on one device, so a batch is gathered by index in a few ops.

    Gathering replaces :meth:`CrystalBatch.from_records` (a Python loop over records and a host
    to device copy per step) and gives the identical batch. Per-atom arrays are concatenated in
    record order: ``frac_coords [N_total, 3]``, ``atomic_numbers [N_total]``; per-crystal ones
    are ``lengths [R, 3]`` (Å), ``angles [R, 3]`` (degrees), ``num_atoms [R]`` and ``starts [R]``
    (each crystal's first atom).
    """

    def __init__(
        self,
        records: Sequence[CrystalRecord],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(records) == 0:
            raise ValueError("Cannot pack an empty list of records")
        device = torch.device(device)
        num_atoms = torch.tensor([int(r.num_atoms) for r in records], dtype=torch.long)
        self.num_atoms = num_atoms.to(device)
        self.starts = (torch.cumsum(num_atoms, 0) - num_atoms).to(device)
        frac_coords = np.concatenate([r.frac_coords for r in records])
        self.frac_coords = torch.from_numpy(frac_coords).to(dtype).to(device)
        atomic_numbers = np.concatenate([r.atomic_numbers for r in records])
        self.atomic_numbers = torch.from_numpy(atomic_numbers).long().to(device)
        self.lengths = torch.from_numpy(np.stack([r.lengths for r in records])).to(dtype).to(device)
        self.angles = torch.from_numpy(np.stack([r.angles for r in records])).to(dtype).to(device)

    def __len__(self) -> int:
        return len(self.num_atoms)

    def batch(self, indices: Tensor) -> CrystalBatch:
        """The crystals ``indices [B]`` (record positions) as a batch on this dataset's device."""
        indices = indices.to(self.num_atoms.device)
        num_atoms = self.num_atoms[indices]
        batch_index, offsets = batch_index_from_num_atoms(num_atoms)
        local = torch.arange(len(batch_index), device=batch_index.device) - offsets[batch_index]
        atoms = self.starts[indices][batch_index] + local
        return CrystalBatch(
            frac_coords=self.frac_coords[atoms],
            lengths=self.lengths[indices],
            angles=self.angles[indices],
            atomic_numbers=self.atomic_numbers[atoms],
            num_atoms=num_atoms,
            offsets=offsets,
            batch_index=batch_index,
            edge_index=fully_connected_edges(num_atoms),
        )


def iterate_batches(
    dataset: PackedCrystals, order: Tensor, batch_size: int, start: int
) -> Iterator[tuple[int, CrystalBatch]]:
    """Yield (batch position, batch) from position ``start`` of ``order`` (one rank's shard)."""
    num_batches = math.ceil(len(order) / batch_size)
    for position in range(start, num_batches):
        yield position, dataset.batch(order[position * batch_size : (position + 1) * batch_size])

"""Batches of crystals as flat tensors (no torch_geometric).

``N`` atoms in a batch of ``B`` crystals: per-atom tensors are ``[N, ...]``, per-crystal tensors
``[B, ...]``; ``batch_index [N]`` gives each atom's crystal and ``offsets [B]`` the index of each
crystal's first atom. The graph is fully connected inside each crystal (every ordered pair of
distinct atoms), as in DiffCSP and KLDM.

A list of records is a valid ``torch.utils.data.Dataset``; batch it with
``DataLoader(records, batch_size=..., shuffle=True, collate_fn=collate)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from kldm_cli.data.records import CrystalRecord


def _check_num_atoms(num_atoms: Tensor) -> Tensor:
    if not isinstance(num_atoms, Tensor):
        num_atoms = torch.as_tensor(num_atoms)
    if num_atoms.ndim != 1 or num_atoms.is_floating_point() or num_atoms.is_complex():
        raise ValueError(
            f"num_atoms must be a 1-D integer tensor [B], got dtype {num_atoms.dtype} "
            f"and shape {tuple(num_atoms.shape)}"
        )
    if len(num_atoms) and int(num_atoms.min()) < 0:
        raise ValueError(f"num_atoms must be non-negative, got {num_atoms.tolist()}")
    return num_atoms.long()


def batch_index_from_num_atoms(num_atoms: Tensor) -> tuple[Tensor, Tensor]:
    """Atom -> crystal map and each crystal's first atom.

    Args:
        num_atoms: ``[B]`` atoms per crystal.

    Returns:
        ``batch_index [N]`` (long, crystal of each atom) and ``offsets [B]`` (long, global index
        of each crystal's first atom), on ``num_atoms.device``.
    """
    num_atoms = _check_num_atoms(num_atoms)
    crystals = torch.arange(len(num_atoms), device=num_atoms.device)
    batch_index = torch.repeat_interleave(crystals, num_atoms)
    offsets = torch.cumsum(num_atoms, dim=0) - num_atoms
    return batch_index, offsets


def fully_connected_edges(num_atoms: Tensor) -> Tensor:
    """All ordered pairs ``(i, j)``, ``i != j``, of atoms in the same crystal.

    Args:
        num_atoms: ``[B]`` atoms per crystal.

    Returns:
        ``edge_index [2, E]`` (long, global atom indices), ``E = sum_b n_b (n_b - 1)``; crystal by
        crystal, and inside a crystal in row-major order of ``(i, j)`` (the order of
        ``dense_to_sparse(ones(n, n) - eye(n))``).
    """
    num_atoms = _check_num_atoms(num_atoms)
    device = num_atoms.device
    # Crystal b owns n_b (n_b - 1) edges. Edge k of it (0 <= k < n_b (n_b - 1)) goes from local
    # atom i = k // (n_b - 1) to the (k % (n_b - 1))-th other atom, skipping i itself.
    edges_per_crystal = num_atoms * (num_atoms - 1)
    crystal = torch.repeat_interleave(
        torch.arange(len(num_atoms), device=device), edges_per_crystal
    )
    first_edge = torch.cumsum(edges_per_crystal, dim=0) - edges_per_crystal
    local_edge = torch.arange(len(crystal), device=device) - first_edge[crystal]
    others = num_atoms[crystal] - 1
    source = torch.div(local_edge, others, rounding_mode="floor")
    target = local_edge - source * others
    target = target + (target >= source).long()
    offsets = (torch.cumsum(num_atoms, dim=0) - num_atoms)[crystal]
    return torch.stack([source + offsets, target + offsets])


@dataclass
class CrystalBatch:
    """``B`` crystals with ``N`` atoms in total.

    Attributes:
        frac_coords: ``[N, 3]`` fractional coordinates in ``[0, 1)`` (float32 by default).
        lengths: ``[B, 3]`` lattice lengths (Å).
        angles: ``[B, 3]`` lattice angles (degrees).
        atomic_numbers: ``[N]`` long.
        num_atoms: ``[B]`` long.
        offsets: ``[B]`` long, index of each crystal's first atom.
        batch_index: ``[N]`` long, crystal of each atom.
        edge_index: ``[2, E]`` long, all ordered pairs of distinct atoms within each crystal.
    """

    frac_coords: Tensor
    lengths: Tensor
    angles: Tensor
    atomic_numbers: Tensor
    num_atoms: Tensor
    offsets: Tensor
    batch_index: Tensor
    edge_index: Tensor

    @property
    def num_crystals(self) -> int:
        return len(self.num_atoms)

    @property
    def num_nodes(self) -> int:
        return len(self.atomic_numbers)

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def __len__(self) -> int:
        return self.num_crystals

    def to(self, device: torch.device | str) -> CrystalBatch:
        """A copy with every tensor on ``device``."""
        return CrystalBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @classmethod
    def from_records(
        cls, records: Sequence[CrystalRecord], *, dtype: torch.dtype = torch.float32
    ) -> CrystalBatch:
        """Batch records (``dtype`` for coordinates and lattice parameters)."""
        if len(records) == 0:
            raise ValueError("Cannot batch an empty list of records")
        num_atoms = torch.tensor([r.num_atoms for r in records], dtype=torch.long)
        frac_coords = torch.from_numpy(np.concatenate([r.frac_coords for r in records]))
        atomic_numbers = torch.from_numpy(np.concatenate([r.atomic_numbers for r in records]))
        lengths = torch.from_numpy(np.stack([r.lengths for r in records]))
        angles = torch.from_numpy(np.stack([r.angles for r in records]))
        batch_index, offsets = batch_index_from_num_atoms(num_atoms)
        return cls(
            frac_coords=frac_coords.to(dtype),
            lengths=lengths.to(dtype),
            angles=angles.to(dtype),
            atomic_numbers=atomic_numbers.long(),
            num_atoms=num_atoms,
            offsets=offsets,
            batch_index=batch_index,
            edge_index=fully_connected_edges(num_atoms),
        )

    @classmethod
    def from_num_atoms(
        cls,
        num_atoms: Tensor,
        atomic_numbers: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> CrystalBatch:
        """An empty batch to sample into: coordinates and lattice zero-filled.

        Args:
            num_atoms: ``[B]`` atoms per crystal (each at least 1).
            atomic_numbers: ``[N]`` atomic numbers (CSP), or None for zeros (DNG: types are
                generated too).
        """
        num_atoms = _check_num_atoms(num_atoms)
        if len(num_atoms) == 0 or int(num_atoms.min()) < 1:
            raise ValueError(f"Every crystal needs at least one atom, got {num_atoms.tolist()}")
        device = num_atoms.device
        total = int(num_atoms.sum())
        if atomic_numbers is None:
            atomic_numbers = torch.zeros(total, dtype=torch.long, device=device)
        else:
            atomic_numbers = torch.as_tensor(atomic_numbers, device=device).long()
            if atomic_numbers.shape != (total,):
                raise ValueError(
                    f"atomic_numbers has shape {tuple(atomic_numbers.shape)} but num_atoms sums "
                    f"to {total}"
                )
        batch_index, offsets = batch_index_from_num_atoms(num_atoms)
        num_crystals = len(num_atoms)
        return cls(
            frac_coords=torch.zeros(total, 3, dtype=dtype, device=device),
            lengths=torch.zeros(num_crystals, 3, dtype=dtype, device=device),
            angles=torch.zeros(num_crystals, 3, dtype=dtype, device=device),
            atomic_numbers=atomic_numbers,
            num_atoms=num_atoms,
            offsets=offsets,
            batch_index=batch_index,
            edge_index=fully_connected_edges(num_atoms),
        )

    def to_records(self) -> list[CrystalRecord]:
        """One record per crystal (float64 numpy arrays, coordinates wrapped into ``[0, 1)``)."""
        frac = self.frac_coords.detach().cpu().double().numpy()
        frac = frac - np.floor(frac)
        frac[frac >= 1.0] = 0.0
        numbers = self.atomic_numbers.detach().cpu().numpy()
        lengths = self.lengths.detach().cpu().double().numpy()
        angles = self.angles.detach().cpu().double().numpy()
        bounds = np.cumsum(self.num_atoms.detach().cpu().numpy())
        starts = bounds - self.num_atoms.detach().cpu().numpy()
        return [
            CrystalRecord(
                frac_coords=frac[start:end],
                lengths=lengths[b],
                angles=angles[b],
                atomic_numbers=numbers[start:end],
            )
            for b, (start, end) in enumerate(zip(starts.tolist(), bounds.tolist(), strict=True))
        ]


def collate(records: Sequence[CrystalRecord]) -> CrystalBatch:
    """``collate_fn`` for a ``DataLoader`` over records (:meth:`CrystalBatch.from_records`)."""
    return CrystalBatch.from_records(records)

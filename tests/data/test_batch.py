"""CrystalBatch and the vectorised index helpers against naive double loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kldm_cli.data.batch import (
    CrystalBatch,
    batch_index_from_num_atoms,
    collate,
    fully_connected_edges,
)
from kldm_cli.data.readers import read_csv


def naive_edges(num_atoms: list[int]) -> torch.Tensor:
    pairs, offset = [], 0
    for n in num_atoms:
        for i in range(n):
            for j in range(n):
                if i != j:
                    pairs.append((offset + i, offset + j))
        offset += n
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T


def naive_batch_index(num_atoms: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch_index, offsets = [], []
    for b, n in enumerate(num_atoms):
        offsets.append(len(batch_index))
        batch_index.extend([b] * n)
    return torch.tensor(batch_index, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


@pytest.mark.parametrize("n", range(1, 21))
def test_edges_of_one_cell(n):
    edges = fully_connected_edges(torch.tensor([n]))
    assert edges.dtype == torch.long and edges.shape == (2, n * (n - 1))
    assert torch.equal(edges, naive_edges([n]))


def test_edges_and_indices_of_mixed_batches():
    generator = torch.Generator().manual_seed(0)
    cases = [[1], [1, 1, 1], [20, 1, 2], [3, 0, 4]]
    cases += [torch.randint(1, 21, (b,), generator=generator).tolist() for b in (2, 7, 32)]
    for num_atoms in cases:
        tensor = torch.tensor(num_atoms)
        assert torch.equal(fully_connected_edges(tensor), naive_edges(num_atoms))
        batch_index, offsets = batch_index_from_num_atoms(tensor)
        expected_index, expected_offsets = naive_batch_index(num_atoms)
        assert torch.equal(batch_index, expected_index)
        assert torch.equal(offsets, expected_offsets)


def test_empty_batch_helpers():
    empty = torch.zeros(0, dtype=torch.long)
    assert fully_connected_edges(empty).shape == (2, 0)
    batch_index, offsets = batch_index_from_num_atoms(empty)
    assert batch_index.shape == (0,) and offsets.shape == (0,)


@pytest.mark.parametrize(
    "num_atoms", [torch.tensor([2.0, 3.0]), torch.tensor([[2, 3]]), torch.tensor([2, -1])]
)
def test_bad_num_atoms(num_atoms):
    with pytest.raises(ValueError, match="num_atoms"):
        fully_connected_edges(num_atoms)
    with pytest.raises(ValueError, match="num_atoms"):
        batch_index_from_num_atoms(num_atoms)


def test_from_records(mp20_small_csv):
    records = read_csv(mp20_small_csv).records[:5]
    batch = CrystalBatch.from_records(records)
    num_atoms = [r.num_atoms for r in records]
    total = sum(num_atoms)
    assert batch.num_crystals == 5 and len(batch) == 5 and batch.num_nodes == total
    assert batch.frac_coords.shape == (total, 3) and batch.frac_coords.dtype == torch.float32
    assert batch.lengths.shape == (5, 3) and batch.angles.shape == (5, 3)
    assert batch.atomic_numbers.dtype == torch.long
    assert batch.num_atoms.tolist() == num_atoms
    assert torch.equal(batch.edge_index, naive_edges(num_atoms))
    assert batch.num_edges == sum(n * (n - 1) for n in num_atoms)
    for b, record in enumerate(records):
        atoms = batch.batch_index == b
        np.testing.assert_allclose(batch.frac_coords[atoms].numpy(), record.frac_coords, atol=1e-6)
        assert batch.atomic_numbers[atoms].tolist() == record.atomic_numbers.tolist()
        assert int(batch.offsets[b]) == int(np.flatnonzero(atoms.numpy())[0])
        np.testing.assert_allclose(batch.lengths[b].numpy(), record.lengths, rtol=1e-6)
        np.testing.assert_allclose(batch.angles[b].numpy(), record.angles, rtol=1e-6)
    double = CrystalBatch.from_records(records, dtype=torch.float64)
    for back, record in zip(double.to_records(), records, strict=True):
        np.testing.assert_array_equal(back.frac_coords, record.frac_coords)
        np.testing.assert_array_equal(back.lengths, record.lengths)
    with pytest.raises(ValueError, match="empty"):
        CrystalBatch.from_records([])


def test_to_moves_every_tensor(mp20_small_csv):
    batch = CrystalBatch.from_records(read_csv(mp20_small_csv).records[:3])
    moved = batch.to("meta")
    for name in ("frac_coords", "lengths", "angles", "atomic_numbers", "num_atoms", "offsets"):
        assert getattr(moved, name).device.type == "meta"
    assert moved.batch_index.device.type == "meta" and moved.edge_index.device.type == "meta"
    assert batch.frac_coords.device.type == "cpu"


def test_from_num_atoms():
    batch = CrystalBatch.from_num_atoms(torch.tensor([2, 3]))
    assert batch.num_nodes == 5 and batch.num_crystals == 2
    assert torch.count_nonzero(batch.frac_coords) == 0 and torch.count_nonzero(batch.lengths) == 0
    assert batch.atomic_numbers.tolist() == [0] * 5
    assert torch.equal(batch.edge_index, naive_edges([2, 3]))
    csp = CrystalBatch.from_num_atoms(torch.tensor([2]), torch.tensor([3, 8]))
    assert csp.atomic_numbers.tolist() == [3, 8]
    with pytest.raises(ValueError, match="sums to 2"):
        CrystalBatch.from_num_atoms(torch.tensor([2]), torch.tensor([3]))
    with pytest.raises(ValueError, match="at least one atom"):
        CrystalBatch.from_num_atoms(torch.tensor([2, 0]))


def test_dataloader_with_collate(mp20_small_csv):
    records = read_csv(mp20_small_csv).records
    batches = list(DataLoader(records, batch_size=16, collate_fn=collate))
    assert [b.num_crystals for b in batches] == [16, 16, 8]
    assert sum(b.num_nodes for b in batches) == sum(r.num_atoms for r in records)

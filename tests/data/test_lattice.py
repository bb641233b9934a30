"""Lattice statistics and the normalised lattice representation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice
from scipy import stats as scipy_stats

from kldm_cli.config import LatticeStats
from kldm_cli.data.lattice import (
    MIN_LENGTH_SCALE,
    LatticeTransform,
    fit_lattice_stats,
    lattice_matrix,
    lattice_params_from_matrix,
)
from kldm_cli.data.readers import read_csv
from kldm_cli.data.records import CrystalRecord


def random_cells(num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid cells: lengths 2..20 Å, angles 60..120° (always a positive volume)."""
    lengths = 2.0 + 18.0 * torch.rand(num, 3, generator=generator, dtype=torch.float64)
    angles = 60.0 + 60.0 * torch.rand(num, 3, generator=generator, dtype=torch.float64)
    return lengths, angles


def record(num_atoms: int, lengths) -> CrystalRecord:
    return CrystalRecord(
        frac_coords=np.zeros((num_atoms, 3)),
        lengths=lengths,
        angles=[90.0, 90.0, 90.0],
        atomic_numbers=np.ones(num_atoms, dtype=np.int64),
    )


@pytest.fixture
def stats(mp20_small_csv, perov5_small_csv) -> LatticeStats:
    records = read_csv(mp20_small_csv).records + read_csv(perov5_small_csv).records
    return fit_lattice_stats(records)


def test_fit_matches_scipy_trimmed_statistics():
    rng = np.random.default_rng(0)
    records = [record(4, rng.uniform(3.0, 9.0, size=3)) for _ in range(200)]
    records += [record(7, rng.uniform(4.0, 12.0, size=3)) for _ in range(39)]
    stats = fit_lattice_stats(records)
    assert stats.angle_loc == 0.0 and stats.angle_scale == 0.35
    for n in (4, 7):
        log_lengths = np.log([r.lengths for r in records if r.num_atoms == n])
        trimmed = scipy_stats.trimboth(log_lengths, 0.025, axis=0)
        assert len(trimmed) == len(log_lengths) - 2 * int(0.025 * len(log_lengths))
        np.testing.assert_allclose(
            stats.length_loc[n], scipy_stats.trim_mean(log_lengths, 0.025, axis=0), rtol=1e-12
        )
        np.testing.assert_allclose(stats.length_scale[n], trimmed.std(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="empty"):
        fit_lattice_stats([])


def test_single_sample_scale_is_floored():
    stats = fit_lattice_stats([record(3, [4.0, 5.0, 6.0])])
    np.testing.assert_allclose(stats.length_loc[3], np.log([4.0, 5.0, 6.0]))
    assert stats.length_scale[3] == [MIN_LENGTH_SCALE] * 3
    zero = LatticeStats(length_loc={3: [1.0, 1.0, 1.0]}, length_scale={3: [0.0, 0.0, 0.0]})
    _, scale = LatticeTransform(zero).length_loc_scale(torch.tensor([3]))
    assert torch.all(scale == MIN_LENGTH_SCALE)


def test_encode_matches_the_formula(stats):
    transform = LatticeTransform(stats)
    lengths = torch.tensor([[3.0, 4.0, 5.0]], dtype=torch.float64)
    angles = torch.tensor([[90.0, 60.0, 120.0]], dtype=torch.float64)
    encoded = transform.encode(lengths, angles, torch.tensor([5]))
    loc, scale = np.array(stats.length_loc[5]), np.array(stats.length_scale[5])
    expected_lengths = (np.log([3.0, 4.0, 5.0]) - loc) / scale
    expected_angles = np.tan(np.radians([90.0, 60.0, 120.0]) - math.pi / 2) / 0.35
    np.testing.assert_allclose(encoded[0, :3].numpy(), expected_lengths, rtol=1e-12)
    np.testing.assert_allclose(encoded[0, 3:].numpy(), expected_angles, atol=1e-12)


def test_inverse_is_exact_on_random_and_real_cells(stats, mp20_small_csv):
    transform = LatticeTransform(stats)
    generator = torch.Generator().manual_seed(1)
    lengths, angles = random_cells(500, generator)
    # Seen counts, gaps, below the smallest and above the largest count.
    num_atoms = torch.randint(1, 60, (500,), generator=generator)
    encoded = transform.encode(lengths, angles, num_atoms)
    assert encoded.shape == (500, 6) and encoded.dtype == torch.float64
    back_lengths, back_angles = transform.decode(encoded, num_atoms)
    torch.testing.assert_close(back_lengths, lengths, rtol=1e-12, atol=0)
    torch.testing.assert_close(back_angles, angles, rtol=1e-12, atol=1e-10)

    params = torch.randn(500, 6, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        transform.encode(*transform.decode(params, num_atoms), num_atoms), params, rtol=0, atol=1e-9
    )

    real = read_csv(mp20_small_csv).records
    lengths = torch.tensor(np.stack([r.lengths for r in real]))
    angles = torch.tensor(np.stack([r.angles for r in real]))
    num_atoms = torch.tensor([r.num_atoms for r in real])
    back_lengths, back_angles = transform.decode(
        transform.encode(lengths, angles, num_atoms), num_atoms
    )
    torch.testing.assert_close(back_lengths, lengths, rtol=1e-12, atol=0)
    torch.testing.assert_close(back_angles, angles, rtol=1e-12, atol=1e-10)


def test_unseen_atom_count_uses_nearest_count_rescaled():
    stats = LatticeStats(
        length_loc={4: [1.0, 1.1, 1.2], 10: [2.0, 2.1, 2.2]},
        length_scale={4: [0.1, 0.2, 0.3], 10: [0.4, 0.5, 0.6]},
    )
    transform = LatticeTransform(stats)
    zeros = torch.zeros(4, 6, dtype=torch.float64)
    num_atoms = torch.tensor([4, 6, 7, 30])  # 6: nearest is 4; 7: tie -> 4; 30: nearest is 10
    lengths, angles = transform.decode(zeros, num_atoms)
    nearest = [4, 4, 4, 10]
    for row, (n, n_prime) in enumerate(zip(num_atoms.tolist(), nearest, strict=True)):
        expected = np.exp(stats.length_loc[n_prime]) * (n / n_prime) ** (1 / 3)
        np.testing.assert_allclose(lengths[row].numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(angles, torch.full_like(angles, 90.0))
    _, scale = transform.length_loc_scale(num_atoms)
    np.testing.assert_allclose(scale[3].numpy(), stats.length_scale[10])
    with pytest.raises(ValueError, match="at least 1"):
        transform.decode(torch.zeros(1, 6), torch.tensor([0]))


def test_decode_angles_stay_in_open_interval(stats):
    transform = LatticeTransform(stats)
    params = torch.tensor([[0.0, 0.0, 0.0, -50.0, 0.0, 50.0]], dtype=torch.float64)
    _, angles = transform.decode(params, torch.tensor([5]))
    assert torch.all(angles > 0.0) and torch.all(angles < 180.0)


def test_float32_and_stats_round_trip(stats):
    transform = LatticeTransform(LatticeStats.from_dict(stats.to_dict()))
    lengths = torch.tensor([[4.0, 5.0, 6.0]])
    angles = torch.tensor([[80.0, 90.0, 100.0]])
    encoded = transform.encode(lengths, angles, torch.tensor([5]))
    assert encoded.dtype == torch.float32
    torch.testing.assert_close(
        encoded, LatticeTransform(stats).encode(lengths, angles, torch.tensor([5]))
    )
    back_lengths, back_angles = transform.decode(encoded, torch.tensor([5]))
    assert back_lengths.dtype == torch.float32
    torch.testing.assert_close(back_lengths, lengths, rtol=1e-5, atol=0)
    torch.testing.assert_close(back_angles, angles, rtol=1e-5, atol=1e-4)


def test_bad_inputs(stats):
    with pytest.raises(ValueError, match="empty"):
        LatticeTransform(LatticeStats())
    transform = LatticeTransform(stats)
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        transform.encode(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="num_atoms"):
        transform.encode(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        transform.decode(torch.ones(2, 3), torch.tensor([1, 1]))


def test_lattice_matrix_matches_pymatgen():
    generator = torch.Generator().manual_seed(2)
    lengths, angles = random_cells(50, generator)
    matrices = lattice_matrix(lengths, angles)
    assert matrices.shape == (50, 3, 3)
    for matrix, abc, angs in zip(matrices, lengths, angles, strict=True):
        expected = Lattice.from_parameters(*abc.tolist(), *angs.tolist()).matrix
        np.testing.assert_allclose(matrix.numpy(), expected, rtol=0, atol=1e-10)
    back_lengths, back_angles = lattice_params_from_matrix(matrices)
    torch.testing.assert_close(back_lengths, lengths, rtol=1e-12, atol=0)
    torch.testing.assert_close(back_angles, angles, rtol=0, atol=1e-9)
    assert lattice_matrix(lengths.float(), angles.float()).dtype == torch.float32

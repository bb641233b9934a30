"""Batch planning, time grid and the per-batch seeding used by predict/generate."""

import pytest
import torch

from kldm_cli.sampling import batch_generator, plan_batches, time_grid


def test_plan_batches_respects_budget_and_order():
    counts = [5, 7, 3, 20, 1, 1, 9]
    batches = plan_batches(counts, atom_budget=12)
    assert [i for batch in batches for i in batch] == list(range(len(counts)))
    for batch in batches:
        atoms = sum(counts[i] for i in batch)
        assert atoms <= 12 or len(batch) == 1  # an oversize crystal gets its own batch


def test_plan_batches_rejects_bad_budget():
    with pytest.raises(ValueError, match="budget"):
        plan_batches([1, 2], atom_budget=0)


def test_time_grid_runs_from_one_to_t_min():
    grid = time_grid(10, t_min=1e-3)
    assert grid.shape == (11,)
    assert grid[0] == 1.0 and abs(float(grid[-1]) - 1e-3) < 1e-12
    assert bool((grid[1:] < grid[:-1]).all())
    with pytest.raises(ValueError):
        time_grid(0)


def test_batch_generator_depends_on_seed_and_batch():
    a = torch.rand(3, generator=batch_generator(1, 0))
    b = torch.rand(3, generator=batch_generator(1, 0))
    c = torch.rand(3, generator=batch_generator(1, 1))
    d = torch.rand(3, generator=batch_generator(2, 0))
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)

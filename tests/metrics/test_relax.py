"""CHGNet relaxation, the site RMSD and the ranking of relaxed candidates."""

from __future__ import annotations

import sys

import pytest
from pymatgen.core import Structure

from kldm_cli.evaluation.relax import (
    RelaxResult,
    drop_relaxed_duplicates,
    load_chgnet,
    rank_candidates,
    relax_structures,
    site_rmsd,
)

from .conftest import cscl_nacl, displaced, low_symmetry_crystal, rocksalt_nacl


def result(index: int, structure: Structure, energy: float | None) -> RelaxResult:
    return RelaxResult(
        index=index, initial_structure=structure, structure=None if energy is None else structure,
        initial_energy_per_atom=energy, energy_per_atom=energy, rmsd=0.0, volume_change=0.0,
        num_steps=0, converged=True, error=None if energy is not None else "failed",
    )  # fmt: skip


def test_site_rmsd_of_a_known_displacement() -> None:
    crystal = low_symmetry_crystal()
    assert site_rmsd(crystal, displaced(crystal, 0.07)) == pytest.approx(0.07, rel=1e-9)


def test_site_rmsd_ignores_wrapping_and_rigid_translation() -> None:
    crystal = rocksalt_nacl()
    moved = crystal.copy()
    moved.translate_sites(list(range(len(moved))), [0.6, 0.0, 0.0], to_unit_cell=True)
    assert site_rmsd(crystal, moved) == pytest.approx(0.0, abs=1e-9)


def test_ranking_orders_by_energy_and_drops_duplicates() -> None:
    crystal = low_symmetry_crystal()
    results = [
        result(0, rocksalt_nacl(), -3.0),
        result(1, crystal, -5.0),
        result(2, cscl_nacl(), -4.0),
        result(3, displaced(crystal, 0.01), -4.5),  # a duplicate of #1, higher in energy
        result(4, rocksalt_nacl(), None),  # failed: never ranked
    ]
    assert [r.index for r in rank_candidates(results, dedupe=False)] == [1, 3, 2, 0]
    assert [r.index for r in rank_candidates(results)] == [1, 2, 0]


def test_relaxed_duplicates_point_at_the_lower_energy_structure_they_match() -> None:
    crystal = low_symmetry_crystal()
    ranked = [
        result(1, crystal, -5.0),
        result(3, displaced(crystal, 0.01), -4.5),
        result(2, cscl_nacl(), -4.0),
        result(0, cscl_nacl().copy(), -3.5),
    ]
    kept, duplicate_of = drop_relaxed_duplicates(ranked)
    assert [r.index for r in kept] == [1, 2]
    assert duplicate_of == {3: 1, 0: 2}


def test_missing_chgnet_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "chgnet", None)
    monkeypatch.setitem(sys.modules, "chgnet.model", None)
    with pytest.raises(ImportError, match=r"pip install \"kldm-cli\[relax\]\""):
        load_chgnet()


def test_chgnet_relaxation_lowers_the_energy(chgnet_model) -> None:
    strained = displaced(rocksalt_nacl(5.4), 0.15, seed=3)  # compressed and rattled
    (relaxed,) = relax_structures([strained], steps=5, fmax=0.05, model=chgnet_model)
    assert relaxed.error is None
    assert relaxed.num_steps == 5 and not relaxed.converged
    assert relaxed.energy_per_atom < relaxed.initial_energy_per_atom
    assert relaxed.rmsd > 0.0
    assert relaxed.volume_change > 0.0  # a compressed cell expands
    assert len(relaxed.structure) == len(strained)
    assert relaxed.structure.site_properties == {}

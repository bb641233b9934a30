"""Structural and compositional validity on cases with known answers."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from kldm_cli.evaluation.metrics.validity import (
    compositional_validity,
    is_valid,
    structural_validity,
)

from .conftest import NACL_A, collapsed_nacl, rocksalt_nacl


def test_rocksalt_is_structurally_valid() -> None:
    assert structural_validity(rocksalt_nacl())


def test_atoms_closer_than_half_an_angstrom_are_invalid() -> None:
    assert not structural_validity(collapsed_nacl())


def test_distance_across_the_periodic_boundary_counts() -> None:
    # 0.02 and 0.98 along a 5.64 Å axis: 0.23 Å apart through the boundary, 5.4 Å inside the cell
    structure = Structure(Lattice.cubic(NACL_A), ["Na", "Cl"], [[0.02, 0, 0], [0.98, 0, 0]])
    assert not structural_validity(structure)
    assert structural_validity(structure, min_dist=0.2)


def test_an_atom_too_close_to_its_own_image_is_invalid() -> None:
    # one atom per cell, a 0.45 Å lattice vector: the atom sits 0.45 Å from its own image
    lattice = Lattice.from_parameters(0.45, 6.0, 6.0, 90, 90, 90)
    assert not structural_validity(Structure(lattice, ["Fe"], [[0, 0, 0]]))
    assert structural_validity(Structure(Lattice.cubic(2.9), ["Fe"], [[0, 0, 0]]))


def test_tiny_volume_is_invalid() -> None:
    assert not structural_validity(Structure(Lattice.cubic(0.4), ["Fe"], [[0, 0, 0]]))
    assert not structural_validity(rocksalt_nacl(), min_volume=1e3)  # 44.9 Å^3 < 1000 Å^3


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("NaCl", True),
        ("Na4Cl4", True),  # counts are reduced first
        ("NaCl2", False),  # no charge-neutral oxidation states
        ("Fe", True),  # single element
        ("Fe3Al", True),  # all metals: an alloy
        ("CuAu", True),
        ("Fe2O3", True),
        ("LiFePO4", True),
        ("Na2Cl", False),  # neutral only as Na(-1)2 Cl(+2): fails the Pauling test
    ],
)
def test_compositional_validity(formula: str, expected: bool) -> None:
    assert compositional_validity(formula) is expected


def test_pauling_test_is_what_rejects_na2cl() -> None:
    assert compositional_validity("Na2Cl", use_pauling_test=False)


def test_validity_of_a_structure_uses_its_composition() -> None:
    assert compositional_validity(rocksalt_nacl())
    assert is_valid(rocksalt_nacl())
    assert not is_valid(collapsed_nacl())

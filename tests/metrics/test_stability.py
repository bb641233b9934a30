"""Energy above hull, stable % and S.U.N. % from hand-made energies (no CHGNet needed)."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from kldm_cli.evaluation.metrics.stability import (
    HullReference,
    chemical_system,
    elemental_crystals,
    energies_above_hull,
    relevant_reference,
    stability_metrics,
)

from .conftest import cscl_nacl, rocksalt_nacl


def unary(symbol: str) -> Structure:
    return Structure(Lattice.cubic(3.0), [symbol], [[0, 0, 0]])


def na2cl() -> Structure:
    return Structure(
        Lattice.cubic(5.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5]]
    )


@pytest.fixture
def hull() -> HullReference:
    """Na and Cl at 0 eV/atom, rocksalt NaCl at -1 eV/atom (formation energy -1 eV/atom), and a
    structure CHGNet 'failed' on (None), which must be ignored."""
    structures = [unary("Na"), unary("Cl"), rocksalt_nacl(), unary("Cl") * 2]
    return HullReference(structures, [0.0, 0.0, -1.0, None], "hand-made")


def test_energy_above_hull_known_values(hull: HullReference) -> None:
    samples = [cscl_nacl(), na2cl(), cscl_nacl(), unary("Na")]
    energies = [-0.9, -0.5, -1.2, 0.25]
    e_hull = energies_above_hull(samples, energies, hull)
    # NaCl at -0.9 sits 0.1 above -1; Na2Cl: hull at x_Cl = 1/3 is -2/3, so -0.5 is 1/6 above;
    # NaCl at -1.2 is 0.2 *below* the reference hull; Na at 0.25 is 0.25 above elemental Na
    assert e_hull == pytest.approx([0.1, 1 / 6, -0.2, 0.25])


def test_an_element_without_elemental_reference_is_unknown(hull: HullReference) -> None:
    kcl = rocksalt_nacl().copy()
    kcl.replace_species({"Na": "K"})
    assert energies_above_hull([kcl, cscl_nacl()], [-2.0, None], hull) == [None, None]


def test_stable_and_sun_rates() -> None:
    result = stability_metrics(
        [0.05, 0.2, None, -0.1], is_unique=[True, True, True, False], is_novel=[True] * 4
    )
    assert result.is_stable == [True, False, False, True]
    assert result.is_sun == [True, False, False, False]
    assert result.stable_rate == 0.5
    assert result.sun_rate == 0.25
    assert result.num_unknown == 1
    assert result.mean_e_above_hull == pytest.approx((0.05 + 0.2 - 0.1) / 3)
    assert stability_metrics([None], [True], [True]).mean_e_above_hull is None


def test_only_reference_structures_within_a_sample_system_are_needed() -> None:
    reference = [unary("Na"), unary("Cl"), unary("K"), rocksalt_nacl(), na2cl()]
    assert relevant_reference([cscl_nacl()], reference) == [0, 1, 3, 4]
    assert relevant_reference([unary("K")], reference) == [2]


def test_elemental_crystals_have_the_reference_state_symmetry() -> None:
    """ASE's reference crystals, checked by their space group (spglib through pymatgen)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    crystals = elemental_crystals(["Fe", "Cu", "Ti", "Si", "O", "Fe"])
    assert sorted(crystals) == ["Cu", "Fe", "Si", "Ti"]  # O has no crystal state in ASE
    space_groups = {
        symbol: SpacegroupAnalyzer(structure).get_space_group_number()
        for symbol, structure in crystals.items()
    }
    assert space_groups == {"Fe": 229, "Cu": 225, "Ti": 194, "Si": 227}
    assert all(set(chemical_system(s)) == {symbol} for symbol, s in crystals.items())

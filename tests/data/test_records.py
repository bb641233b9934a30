"""CrystalRecord <-> pymatgen Structure, cell checks."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from kldm_cli.data.records import CrystalRecord, cell_problem, cell_volume, wrap_frac_coords


def rocksalt() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_structure_round_trip():
    structure = rocksalt()
    structure.translate_sites(list(range(len(structure))), [-0.25, 1.5, 0.0])  # leave [0, 1)
    record = CrystalRecord.from_structure(structure, material_id="nacl", metadata={"e": 1.0})
    assert record.num_atoms == 8 and record.material_id == "nacl" and record.metadata == {"e": 1.0}
    assert record.frac_coords.dtype == np.float64 and record.atomic_numbers.dtype == np.int64
    assert np.all((record.frac_coords >= 0) & (record.frac_coords < 1))
    assert record.formula == "NaCl"
    assert record.volume == pytest.approx(structure.volume, rel=1e-12)
    back = record.to_structure()
    np.testing.assert_allclose(back.lattice.parameters, structure.lattice.parameters, atol=1e-12)
    np.testing.assert_allclose(record.lattice_matrix(), back.lattice.matrix, atol=1e-12)
    assert back.matches(structure)


def test_niggli_reduced_matches_pymatgen():
    structure = Structure(
        Lattice.from_parameters(4.0, 5.0, 6.0, 60.0, 70.0, 100.0),
        ["Si", "O", "O"],
        [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.9, 0.1, 0.5]],
    )
    supercellish = structure.copy()
    supercellish.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # same lattice, skewed cell
    record = CrystalRecord.from_structure(supercellish).niggli_reduced()
    reference = supercellish.get_reduced_structure()
    np.testing.assert_allclose(
        [*record.lengths, *record.angles], reference.lattice.parameters, atol=1e-10
    )
    assert record.to_structure().matches(structure)


def test_disordered_structure_is_refused():
    structure = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        CrystalRecord.from_structure(structure)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="atomic_numbers"):
        CrystalRecord(np.zeros((2, 3)), [3, 3, 3], [90, 90, 90], [1])


@pytest.mark.parametrize(
    ("lengths", "angles", "message"),
    [
        ([3, 3, np.nan], [90, 90, 90], "non-finite"),
        ([3, 0, 3], [90, 90, 90], "non-positive"),
        ([3, 3, 3], [90, 180, 90], "outside"),
        ([3, 3, 3], [120, 120, 120], "zero-volume"),
        ([3, 3, 3], [10, 10, 100], "zero-volume"),
    ],
)
def test_cell_problems(lengths, angles, message):
    assert message in cell_problem(np.array(lengths, float), np.array(angles, float))


def test_good_cell_and_wrapping():
    assert cell_problem(np.array([3.0, 4.0, 5.0]), np.array([90.0, 100.0, 110.0])) is None
    assert cell_volume(np.array([2.0, 3.0, 4.0]), np.array([90.0, 90.0, 90.0])) == pytest.approx(24)
    wrapped = wrap_frac_coords(np.array([[-1e-17, 1.0, 2.25]]))
    assert wrapped.tolist() == [[0.0, 0.0, 0.25]]

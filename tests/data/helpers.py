"""Independent references for the data tests: pymatgen's own parse of the fixtures."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure


def pymatgen_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def pymatgen_structure(cif: str, niggli: bool) -> Structure:
    """How CDVAE/DiffCSP/KLDM read a CIF: ``Structure.from_str`` (+ ``get_reduced_structure``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
    return structure.get_reduced_structure() if niggli else structure


def assert_same_atoms(structure: Structure, reference: Structure, atol: float) -> None:
    """Each atom of ``structure`` has one of the same element in ``reference`` at the same
    fractional position (periodic distance per coordinate below ``atol``), and vice versa."""
    assert sorted(structure.atomic_numbers) == sorted(reference.atomic_numbers)
    ref_numbers = np.array(reference.atomic_numbers)
    for frac, z in zip(structure.frac_coords, structure.atomic_numbers, strict=True):
        diff = reference.frac_coords[ref_numbers == z] - frac
        diff -= np.round(diff)
        assert np.abs(diff).max(axis=1).min() < atol

"""One crystal as plain numpy arrays, and a parsed dataset of them.

A :class:`CrystalRecord` is the canonical in-memory form of a crystal in kldm: fractional
coordinates in ``[0, 1)``, lattice lengths (Å) and angles (degrees), atomic numbers. The lattice
orientation is not stored: :meth:`CrystalRecord.to_structure` rebuilds the lattice matrix from
the six parameters with pymatgen's convention (``Lattice.from_parameters``), as CDVAE, DiffCSP and
the KLDM reference implementation do.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kldm_cli.data.formula import ELEMENT_SYMBOLS, element_symbol

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: A cell whose volume is below this fraction of a*b*c (a nearly flat cell) is rejected.
MIN_RELATIVE_VOLUME = 1e-3


@dataclass
class CrystalRecord:
    """One ordered crystal.

    Attributes:
        frac_coords: ``[K, 3]`` float64 fractional coordinates in ``[0, 1)``.
        lengths: ``[3]`` lattice lengths a, b, c in Å.
        angles: ``[3]`` lattice angles alpha, beta, gamma in degrees.
        atomic_numbers: ``[K]`` int64 atomic numbers.
        material_id: identifier from the source (CSV column ``material_id``, CIF file name, ...).
        metadata: every other piece of information the source had (other CSV columns, extXYZ
            ``info``, kldm comment lines of a CIF), as JSON-compatible values.
    """

    frac_coords: np.ndarray
    lengths: np.ndarray
    angles: np.ndarray
    atomic_numbers: np.ndarray
    material_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3)
        self.lengths = np.asarray(self.lengths, dtype=np.float64).reshape(3)
        self.angles = np.asarray(self.angles, dtype=np.float64).reshape(3)
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        if len(self.frac_coords) != len(self.atomic_numbers):
            raise ValueError(
                f"frac_coords has {len(self.frac_coords)} rows but atomic_numbers has "
                f"{len(self.atomic_numbers)} entries"
            )

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)

    @property
    def formula(self) -> str:
        """Reduced formula, e.g. ``"LiFePO4"`` (pymatgen's ``Composition.reduced_formula``)."""
        from pymatgen.core import Composition

        counts = Counter(element_symbol(z) for z in self.atomic_numbers.tolist())
        with warnings.catch_warnings():  # pymatgen warns about missing electronegativities
            warnings.simplefilter("ignore")
            return Composition(counts).reduced_formula

    @property
    def volume(self) -> float:
        """Cell volume in Å³."""
        return cell_volume(self.lengths, self.angles)

    def lattice_matrix(self) -> np.ndarray:
        """``[3, 3]`` lattice vectors as rows (Å), pymatgen's ``Lattice.from_parameters``."""
        return lattice_matrix_np(self.lengths, self.angles)

    def to_structure(self) -> Structure:
        """The crystal as a pymatgen ``Structure`` (lattice from the six parameters)."""
        from pymatgen.core import Lattice, Structure

        lattice = Lattice.from_parameters(*self.lengths.tolist(), *self.angles.tolist())
        species = [ELEMENT_SYMBOLS[z - 1] for z in self.atomic_numbers.tolist()]
        return Structure(lattice, species, self.frac_coords, coords_are_cartesian=False)

    @classmethod
    def from_structure(
        cls,
        structure: Structure,
        material_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CrystalRecord:
        """Record of an ordered pymatgen ``Structure`` (``ValueError`` if it is disordered).

        The lattice is kept as it is (no reduction; see :meth:`niggli_reduced`); fractional
        coordinates are wrapped into ``[0, 1)``.
        """
        if not structure.is_ordered:
            raise ValueError(
                f"Structure {structure.composition.formula!r} is disordered (partial occupancies); "
                "kldm handles ordered crystals only"
            )
        lengths = np.array(structure.lattice.abc, dtype=np.float64)
        angles = np.array(structure.lattice.angles, dtype=np.float64)
        problem = cell_problem(lengths, angles)
        if problem is not None:
            raise ValueError(problem)
        return cls(
            frac_coords=wrap_frac_coords(np.asarray(structure.frac_coords, dtype=np.float64)),
            lengths=lengths,
            angles=angles,
            atomic_numbers=np.array(structure.atomic_numbers, dtype=np.int64),
            material_id=material_id,
            metadata=dict(metadata or {}),
        )

    def niggli_reduced(self) -> CrystalRecord:
        """The same crystal in its Niggli-reduced cell (what the readers return by default)."""
        lengths, angles, frac_coords = niggli_reduce(self.lengths, self.angles, self.frac_coords)
        return CrystalRecord(
            frac_coords=frac_coords,
            lengths=lengths,
            angles=angles,
            atomic_numbers=self.atomic_numbers.copy(),
            material_id=self.material_id,
            metadata=dict(self.metadata),
        )


@dataclass
class SkippedRow:
    """An input row, file or frame that could not be turned into a record.

    ``location`` says where (``"train.csv:row 17 (mp-1234)"``, a file path, ``"x.extxyz:frame 3"``),
    ``reason`` what went wrong, ``kind`` a short category used to count problems
    (``missing_cif``, ``invalid_cif``, ``invalid_cell``, ``no_atoms``, ``disordered``, ...).
    """

    location: str
    reason: str
    kind: str = "other"


@dataclass
class CrystalDataset:
    """Records parsed from one source, the inputs that were skipped and why.

    ``content_hash`` is the sha256 of the input file (of the sorted names and contents of the
    ``.cif`` files for a folder). ``from_cache`` says whether the records came from the
    preprocessing cache; ``niggli`` whether cells were Niggli-reduced.
    """

    records: list[CrystalRecord]
    skipped: list[SkippedRow]
    source: str
    content_hash: str
    from_cache: bool = False
    niggli: bool = True

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> CrystalRecord:
        return self.records[index]

    @property
    def num_inputs(self) -> int:
        """Rows/files/frames read: parsed plus skipped."""
        return len(self.records) + len(self.skipped)


def wrap_frac_coords(frac_coords: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates into ``[0, 1)`` (``x - floor(x)`` can round up to 1.0)."""
    wrapped = frac_coords - np.floor(frac_coords)
    wrapped[wrapped >= 1.0] = 0.0
    return wrapped


def cell_volume(lengths: np.ndarray, angles: np.ndarray) -> float:
    """Volume (Å³) of the cell with ``lengths`` (Å) and ``angles`` (degrees); NaN if impossible."""
    cos = np.cos(np.radians(np.asarray(angles, dtype=np.float64)))
    arg = 1.0 - np.sum(cos**2) + 2.0 * np.prod(cos)
    if not arg > 0.0:
        return math.nan
    return float(np.prod(lengths) * math.sqrt(arg))


def cell_problem(lengths: np.ndarray, angles: np.ndarray) -> str | None:
    """Why a cell is unusable (non-finite, non-positive, flat, impossible angles), or None."""
    lengths = np.asarray(lengths, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    if not (np.all(np.isfinite(lengths)) and np.all(np.isfinite(angles))):
        return (
            f"non-finite lattice parameters (lengths {lengths.tolist()}, angles {angles.tolist()})"
        )
    if np.any(lengths <= 0.0):
        return f"non-positive lattice length (lengths {lengths.tolist()} Å)"
    if np.any(angles <= 0.0) or np.any(angles >= 180.0):
        return f"lattice angle outside (0°, 180°) (angles {angles.tolist()})"
    volume = cell_volume(lengths, angles)
    if not volume > MIN_RELATIVE_VOLUME * float(np.prod(lengths)):
        return (
            f"zero-volume cell (lengths {lengths.tolist()} Å, angles {angles.tolist()}°, "
            f"volume {volume:.3g} Å³)"
        )
    return None


def lattice_matrix_np(lengths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``[3, 3]`` lattice vectors (rows, Å), pymatgen's ``Lattice.from_parameters`` convention."""
    a, b, c = (float(x) for x in lengths)
    alpha, beta, gamma = np.radians(np.asarray(angles, dtype=np.float64))
    val = (math.cos(alpha) * math.cos(beta) - math.cos(gamma)) / (math.sin(alpha) * math.sin(beta))
    gamma_star = math.acos(min(max(val, -1.0), 1.0))
    return np.array(
        [
            [a * math.sin(beta), 0.0, a * math.cos(beta)],
            [
                -b * math.sin(alpha) * math.cos(gamma_star),
                b * math.sin(alpha) * math.sin(gamma_star),
                b * math.cos(alpha),
            ],
            [0.0, 0.0, c],
        ]
    )


def niggli_reduce(
    lengths: np.ndarray, angles: np.ndarray, frac_coords: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Niggli-reduce a cell exactly as pymatgen's ``Structure.get_reduced_structure()`` does.

    This is the CDVAE / DiffCSP / KLDM-reference preprocessing, so it uses pymatgen's own
    ``Lattice.get_niggli_reduced_lattice`` (about 1-2 ms per cell, most of a first parse).

    Returns reduced ``lengths`` [3] (Å), ``angles`` [3] (degrees) and the atoms' fractional
    coordinates [K, 3] in the reduced cell, wrapped into ``[0, 1)``. The input is returned
    unchanged (coordinates wrapped) when the cell is already reduced.
    """
    from pymatgen.core import Lattice

    lengths = np.asarray(lengths, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    frac_coords = np.asarray(frac_coords, dtype=np.float64)
    lattice = Lattice(lattice_matrix_np(lengths, angles))
    reduced = lattice.get_niggli_reduced_lattice()
    if np.allclose(reduced.matrix, lattice.matrix, rtol=0.0, atol=1e-12):
        return lengths.copy(), angles.copy(), wrap_frac_coords(frac_coords)
    cart_coords = frac_coords @ lattice.matrix
    new_frac = np.linalg.solve(reduced.matrix.T, cart_coords.T).T
    return (
        np.array(reduced.abc, dtype=np.float64),
        np.array(reduced.angles, dtype=np.float64),
        wrap_frac_coords(new_frac),
    )

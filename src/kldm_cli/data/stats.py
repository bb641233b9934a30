"""Summary statistics of a dataset (what ``kldm data stats`` prints)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from kldm_cli.data.formula import element_symbol
from kldm_cli.data.records import CrystalDataset, CrystalRecord, SkippedRow, cell_volume

#: Lattice quantities summarised, with units.
LATTICE_QUANTITIES: tuple[tuple[str, str], ...] = (
    ("a", "Å"),
    ("b", "Å"),
    ("c", "Å"),
    ("alpha", "°"),
    ("beta", "°"),
    ("gamma", "°"),
    ("volume", "Å³"),
)


@dataclass(frozen=True)
class Range:
    """Minimum, mean and maximum of one quantity."""

    min: float
    mean: float
    max: float


@dataclass
class DatasetStats:
    """What a dataset holds.

    Attributes:
        source: path the dataset was read from.
        num_structures: records parsed.
        num_skipped: inputs (rows, files, frames) that could not be used.
        num_atoms_counts: atoms per cell -> number of structures.
        element_structure_counts: element symbol -> structures containing it (by atomic number).
        element_atom_counts: element symbol -> atoms of it over all structures.
        lattice_ranges: ``a, b, c`` (Å), ``alpha, beta, gamma`` (°), ``volume`` (Å³) ranges.
        skipped: the skipped inputs with reasons.
        skipped_kinds: kind of problem -> count.
    """

    source: str
    num_structures: int
    num_skipped: int
    num_atoms_counts: dict[int, int]
    element_structure_counts: dict[str, int]
    element_atom_counts: dict[str, int]
    lattice_ranges: dict[str, Range]
    skipped: list[SkippedRow] = field(default_factory=list)
    skipped_kinds: dict[str, int] = field(default_factory=dict)


def num_atoms_counts(records: Iterable[CrystalRecord]) -> dict[int, int]:
    """Atoms per cell -> number of records, sorted (for ``KLDMConfig.num_atoms_counts``)."""
    return dict(sorted(Counter(record.num_atoms for record in records).items()))


def element_vocabulary(records: Iterable[CrystalRecord]) -> list[int]:
    """Sorted atomic numbers present in the records."""
    present: set[int] = set()
    for record in records:
        present.update(record.atomic_numbers.tolist())
    return sorted(present)


def dataset_stats(dataset: CrystalDataset) -> DatasetStats:
    """Summarise a dataset: sizes, atom counts, elements, lattice ranges, skipped inputs."""
    records = dataset.records
    structure_counts: Counter[int] = Counter()
    atom_counts: Counter[int] = Counter()
    for record in records:
        numbers = record.atomic_numbers.tolist()
        atom_counts.update(numbers)
        structure_counts.update(set(numbers))
    ranges: dict[str, Range] = {}
    if records:
        lengths = np.stack([record.lengths for record in records])
        angles = np.stack([record.angles for record in records])
        volumes = np.array([cell_volume(r.lengths, r.angles) for r in records])
        columns = [*lengths.T, *angles.T, volumes]
        for (name, _), values in zip(LATTICE_QUANTITIES, columns, strict=True):
            ranges[name] = Range(float(values.min()), float(values.mean()), float(values.max()))
    by_number = sorted(atom_counts)
    return DatasetStats(
        source=dataset.source,
        num_structures=len(records),
        num_skipped=len(dataset.skipped),
        num_atoms_counts=num_atoms_counts(records),
        element_structure_counts={element_symbol(z): structure_counts[z] for z in by_number},
        element_atom_counts={element_symbol(z): atom_counts[z] for z in by_number},
        lattice_ranges=ranges,
        skipped=list(dataset.skipped),
        skipped_kinds=dict(Counter(s.kind for s in dataset.skipped).most_common()),
    )

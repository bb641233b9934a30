"""What every reader produces per structure before it becomes a record: a parse result (checked,
optionally Niggli-reduced cell), and the progress callback of the CIF parsers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kldm_cli.data.formula import ATOMIC_NUMBERS
from kldm_cli.data.records import (
    CrystalDataset,
    CrystalRecord,
    SkippedRow,
    cell_problem,
    niggli_reduce,
    wrap_frac_coords,
)

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called while CIFs are parsed."""

#: One parsed structure: ``("ok", lengths [3], angles [3], frac_coords [K, 3], atomic_numbers [K])``
#: or ``("skip", kind, reason)``. Plain tuples keep the traffic with worker processes small.
ParseResult = tuple[Any, ...]


def check_parsed_cell(
    lengths: np.ndarray,
    angles: np.ndarray,
    frac_coords: np.ndarray,
    atomic_numbers: np.ndarray,
    *,
    niggli: bool,
) -> ParseResult:
    """Validate a parsed cell, Niggli-reduce it if asked; a parse result."""
    if len(atomic_numbers) == 0:
        return ("skip", "no_atoms", "structure has no atoms")
    if np.any(atomic_numbers < 1) or np.any(atomic_numbers > len(ATOMIC_NUMBERS)):
        return ("skip", "invalid_species", f"atomic numbers out of range: {atomic_numbers}")
    problem = cell_problem(lengths, angles)
    if problem is not None:
        return ("skip", "invalid_cell", problem)
    if not np.all(np.isfinite(frac_coords)):
        return ("skip", "invalid_coords", "non-finite fractional coordinates")
    if niggli:
        try:
            lengths, angles, frac_coords = niggli_reduce(lengths, angles, frac_coords)
        except Exception as err:  # pymatgen's reduction can fail to converge on odd cells
            return ("skip", "invalid_cell", f"Niggli reduction failed ({err})")
    else:
        frac_coords = wrap_frac_coords(frac_coords)
    return ("ok", lengths, angles, frac_coords, atomic_numbers)


def record_from_result(
    result: ParseResult, material_id: str | None, metadata: dict[str, Any]
) -> CrystalRecord:
    _, lengths, angles, frac_coords, atomic_numbers = result
    return CrystalRecord(
        frac_coords=frac_coords,
        lengths=lengths,
        angles=angles,
        atomic_numbers=atomic_numbers,
        material_id=material_id,
        metadata=metadata,
    )


@dataclass
class DatasetCollector:
    """The records and skipped entries of one input, in input order, as a reader finds them."""

    records: list[CrystalRecord] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)

    def add(
        self, result: ParseResult, location: str, material_id: str | None, metadata: dict[str, Any]
    ) -> None:
        """Keep a parse result: a record, or a skipped entry at ``location`` with its reason."""
        if result[0] == "skip":
            self.skipped.append(SkippedRow(location, result[2], result[1]))
        else:
            self.records.append(record_from_result(result, material_id, metadata))

    def dataset(self, path: Path, content_hash: str, *, niggli: bool) -> CrystalDataset:
        """The dataset read from ``path``."""
        return CrystalDataset(
            records=self.records,
            skipped=self.skipped,
            source=str(path),
            content_hash=content_hash,
            niggli=niggli,
        )

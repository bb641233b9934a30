"""Write hand-made crystals as the files the commands read (CDVAE CSV, CIF folder)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter


def write_csv(
    path: Path,
    structures: Sequence[Structure],
    prefix: str = "ref",
    ids: Sequence[str] | None = None,
) -> Path:
    """A CDVAE-style CSV: ``material_id`` (``ids``, or ``{prefix}-{i}``) and ``cif`` columns."""
    ids = [f"{prefix}-{i}" for i in range(len(structures))] if ids is None else ids
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "cif"])
        for material_id, structure in zip(ids, structures, strict=True):
            writer.writerow([material_id, str(CifWriter(structure))])
    return path


def write_cifs(folder: Path, structures: Sequence[Structure]) -> Path:
    """``sample_000.cif``, ``sample_001.cif``, ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, structure in enumerate(structures):
        (folder / f"sample_{i:03d}.cif").write_text(str(CifWriter(structure)))
    return folder

"""Crystal data: records, readers (CSV/CIF/extXYZ), batches, lattice representation, writers.

This package is the only one that uses pymatgen/ASE for input and output. The names below are
imported lazily (PEP 562), so that reading a cached dataset does not import torch or pymatgen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CrystalBatch": "batch",
    "batch_index_from_num_atoms": "batch",
    "collate": "batch",
    "fully_connected_edges": "batch",
    "parse_formula": "formula",
    "LatticeTransform": "lattice",
    "fit_lattice_stats": "lattice",
    "lattice_matrix": "lattice",
    "lattice_params_from_matrix": "lattice",
    "load_dataset": "readers",
    "read_cif_folder": "readers",
    "read_csv": "readers",
    "read_extxyz": "readers",
    "CrystalDataset": "records",
    "CrystalRecord": "records",
    "SkippedRow": "records",
    "DatasetStats": "stats",
    "dataset_stats": "stats",
    "element_vocabulary": "stats",
    "num_atoms_counts": "stats",
    "StructureWriter": "writers",
}

__all__ = [
    "CrystalBatch",
    "CrystalDataset",
    "CrystalRecord",
    "DatasetStats",
    "LatticeTransform",
    "SkippedRow",
    "StructureWriter",
    "batch_index_from_num_atoms",
    "collate",
    "dataset_stats",
    "element_vocabulary",
    "fit_lattice_stats",
    "fully_connected_edges",
    "lattice_matrix",
    "lattice_params_from_matrix",
    "load_dataset",
    "num_atoms_counts",
    "parse_formula",
    "read_cif_folder",
    "read_csv",
    "read_extxyz",
]

if TYPE_CHECKING:
    from kldm_cli.data.batch import (
        CrystalBatch,
        batch_index_from_num_atoms,
        collate,
        fully_connected_edges,
    )
    from kldm_cli.data.formula import parse_formula
    from kldm_cli.data.lattice import (
        LatticeTransform,
        fit_lattice_stats,
        lattice_matrix,
        lattice_params_from_matrix,
    )
    from kldm_cli.data.readers import load_dataset, read_cif_folder, read_csv, read_extxyz
    from kldm_cli.data.records import CrystalDataset, CrystalRecord, SkippedRow
    from kldm_cli.data.stats import (
        DatasetStats,
        dataset_stats,
        element_vocabulary,
        num_atoms_counts,
    )
    from kldm_cli.data.writers import StructureWriter


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

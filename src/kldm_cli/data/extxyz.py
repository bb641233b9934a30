"""extXYZ files, read with ASE: one frame per crystal, periodic in 3 directions."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kldm_cli.data.cache import file_sha256
from kldm_cli.data.parsed import DatasetCollector, check_parsed_cell
from kldm_cli.data.records import CrystalDataset, SkippedRow


def read_extxyz(path: str | Path, *, niggli: bool = True) -> CrystalDataset:
    """Parse an extXYZ file (one frame per crystal, periodic in 3 directions) with ASE.

    ``material_id`` comes from ``info["material_id"]`` when present; the rest of ``info`` goes
    into ``metadata``. A frame that ASE cannot read ends the file: it and what follows are
    reported as one skipped entry.
    """
    import ase.io

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"No such file: {path}")
    collected = DatasetCollector()
    frames = ase.io.iread(path, index=":", format="extxyz")
    frame_index = 0
    while True:
        location = f"{path.name}:frame {frame_index}"
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as err:  # ASE raises many kinds of errors on malformed frames
            message = " ".join(str(err).split())[:200] or type(err).__name__
            collected.skipped.append(
                SkippedRow(
                    f"{location} onward", f"unreadable extXYZ frame: {message}", "invalid_frame"
                )
            )
            break
        frame_index += 1
        info = {str(k): _json_value(v) for k, v in atoms.info.items()}
        material_id = info.pop("material_id", None)
        material_id = None if material_id is None else str(material_id)
        if material_id:
            location += f" ({material_id})"
        if not all(atoms.pbc):
            collected.skipped.append(
                SkippedRow(
                    location,
                    f"not periodic in 3 directions (pbc={atoms.pbc.tolist()})",
                    "invalid_cell",
                )
            )
            continue
        cellpar = atoms.cell.cellpar()
        result = check_parsed_cell(
            np.array(cellpar[:3], dtype=np.float64),
            np.array(cellpar[3:], dtype=np.float64),
            _scaled_positions(atoms),
            np.array(atoms.numbers, dtype=np.int64),
            niggli=niggli,
        )
        collected.add(result, location, material_id, info)
    return collected.dataset(path, file_sha256(path), niggli=niggli)


def _scaled_positions(atoms: Any) -> np.ndarray:
    """Fractional coordinates (NaN when the cell is singular; the cell check then rejects it)."""
    if len(atoms) == 0:
        return np.zeros((0, 3))
    try:
        return np.asarray(atoms.get_scaled_positions(wrap=False), dtype=np.float64)
    except np.linalg.LinAlgError:
        return np.full((len(atoms), 3), math.nan)


def _json_value(value: Any) -> Any:
    """A JSON-compatible version of an extXYZ ``info`` value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [_json_value(v) for v in value]
    return str(value)

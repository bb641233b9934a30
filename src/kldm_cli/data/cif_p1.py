"""The fast path for CIFs: P1 files in the layout pymatgen's CifWriter produces (all benchmark
CSVs), read without pymatgen with the same result (same coordinates after its rounding of 1/3 and
2/3, wrapped into [0, 1)); anything else returns None and goes through pymatgen."""

from __future__ import annotations

import numpy as np

from kldm_cli.data.formula import ATOMIC_NUMBERS

_CELL_TAGS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
# pymatgen's CifParser defaults: coordinates within frac_tolerance of 1/3 or 2/3 are snapped,
# sites closer than site_tolerance are merged.
_FRAC_TOLERANCE = 1e-4
_SITE_TOLERANCE = 1e-4


def _parse_p1_cif(
    text: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Lengths, angles, fractional coordinates, atomic numbers of a simple P1 CIF, else None.

    Returns None (the caller then uses pymatgen) for anything outside the simple subset: several
    data blocks, text fields, quoted loop values, symmetry other than the single operation
    ``x, y, z``, symbols that are not plain element symbols, partial occupancies, uncertainties
    like ``0.25(1)``, or two sites closer than pymatgen's merge tolerance.
    """
    items: dict[str, str] = {}
    loops: list[tuple[list[str], list[str]]] = []
    in_loop_header = False
    current: tuple[list[str], list[str]] | None = None
    num_blocks = 0
    for raw in text.splitlines():
        if raw.startswith(";"):
            return None
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        lower = line.lower()
        if lower.startswith("data_"):
            num_blocks += 1
            if num_blocks > 1:
                return None
            current, in_loop_header = None, False
        elif lower == "loop_":
            current = ([], [])
            loops.append(current)
            in_loop_header = True
        elif line[0] == "_":
            parts = line.split(None, 1)
            tag, value = parts[0].lower(), (parts[1].strip() if len(parts) > 1 else "")
            if in_loop_header and current is not None and not value:
                current[0].append(tag)
                continue
            current, in_loop_header = None, False
            items[tag] = value
        elif current is not None:
            in_loop_header = False
            current[1].append(line)
        else:
            return None
    if num_blocks != 1:
        return None

    try:
        cell = np.array([float(items[tag]) for tag in _CELL_TAGS], dtype=np.float64)
    except (KeyError, ValueError):
        return None

    symop_loops = [loop for loop in loops if any(tag in loop[0] for tag in _SYMOP_TAGS)]
    if len(symop_loops) != 1:
        return None
    symop_header, symop_rows = symop_loops[0]
    if len(symop_rows) != 1 or len(symop_header) > 2 or symop_header[-1] not in _SYMOP_TAGS:
        return None
    fields = symop_rows[0].split(None, len(symop_header) - 1)
    if len(fields) != len(symop_header):
        return None
    operation = fields[-1]
    if operation.replace(" ", "").replace("'", "").replace('"', "").lower() != "x,y,z":
        return None

    site_loops = [loop for loop in loops if "_atom_site_fract_x" in loop[0]]
    if len(site_loops) != 1:
        return None
    header, rows = site_loops[0]
    try:
        col_symbol = header.index("_atom_site_type_symbol")
        col_xyz = [header.index(f"_atom_site_fract_{axis}") for axis in "xyz"]
    except ValueError:
        return None
    col_occupancy = None
    if "_atom_site_occupancy" in header:
        col_occupancy = header.index("_atom_site_occupancy")

    atomic_numbers = np.empty(len(rows), dtype=np.int64)
    frac_coords = np.empty((len(rows), 3), dtype=np.float64)
    for i, row in enumerate(rows):
        if "'" in row or '"' in row:
            return None
        fields = row.split()
        if len(fields) != len(header):
            return None
        z = ATOMIC_NUMBERS.get(fields[col_symbol])
        if z is None:
            return None
        try:
            frac_coords[i] = [float(fields[col]) for col in col_xyz]
            if col_occupancy is not None and float(fields[col_occupancy]) != 1.0:
                return None
        except ValueError:
            return None
        atomic_numbers[i] = z

    for ideal in (1 / 3, 2 / 3):
        snap = np.abs(frac_coords / ideal - 1.0) <= _FRAC_TOLERANCE
        frac_coords[snap] = ideal
    frac_coords = frac_coords - np.floor(frac_coords)
    if len(frac_coords) > 1:
        diff = frac_coords[:, None, :] - frac_coords[None, :, :]
        diff -= np.round(diff)
        close = np.all(np.abs(diff) <= _SITE_TOLERANCE, axis=-1)
        np.fill_diagonal(close, False)
        if close.any():
            return None
    return cell[:3], cell[3:], frac_coords, atomic_numbers

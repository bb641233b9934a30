"""CDVAE-style CSV files (plain or gzipped): one CIF per row in column ``cif``, optional
``material_id``, any other column kept in ``metadata``."""

from __future__ import annotations

import csv
import gzip
import zlib
from pathlib import Path
from typing import Any

from kldm_cli.data.cache import file_sha256
from kldm_cli.data.cif import parse_cifs
from kldm_cli.data.parsed import DatasetCollector, ProgressCallback
from kldm_cli.data.records import CrystalDataset, SkippedRow


def read_csv(
    path: str | Path,
    *,
    niggli: bool = True,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> CrystalDataset:
    """Parse a CDVAE-style CSV (plain or gzipped) without the cache.

    Column ``cif`` is required; ``material_id`` is optional; every other column goes into each
    record's ``metadata`` (numbers as int/float, empty cells as None). Skipped rows are located as
    ``"train.csv:row 17 (mp-1234)"``, counting data rows from 0 like ``pandas.DataFrame.iloc``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"No such file: {path}")
    header, rows = _read_csv_rows(path)
    if "cif" not in header:
        raise ValueError(f"{path}: no 'cif' column (columns: {header})")
    cif_col = header.index("cif")
    id_col = header.index("material_id") if "material_id" in header else None
    other_cols = [(i, name) for i, name in enumerate(header) if i not in (cif_col, id_col)]

    skipped: dict[int, SkippedRow] = {}
    tasks: list[tuple[int, str]] = []
    row_info: list[tuple[str | None, dict[str, Any]]] = []
    for row_index, row in enumerate(rows):
        material_id = _cell(row, id_col)
        metadata = {name: _parse_value(_cell(row, col)) for col, name in other_cols}
        row_info.append((material_id or None, metadata))
        location = f"{path.name}:row {row_index}" + (f" ({material_id})" if material_id else "")
        if len(row) > len(header):
            skipped[row_index] = SkippedRow(
                location,
                f"malformed row: {len(row)} fields but the header has {len(header)}",
                "malformed_row",
            )
            continue
        cif = _cell(row, cif_col)
        if cif is None or not cif.strip() or cif.strip().lower() == "nan":
            skipped[row_index] = SkippedRow(location, "missing or empty 'cif' value", "missing_cif")
            continue
        tasks.append((row_index, cif))

    results = parse_cifs([cif for _, cif in tasks], niggli, num_workers, progress, False)
    parsed = {row_index: blocks[0] for (row_index, _), blocks in zip(tasks, results, strict=True)}

    collected = DatasetCollector()
    for row_index, (material_id, metadata) in enumerate(row_info):
        if row_index in skipped:
            collected.skipped.append(skipped[row_index])
            continue
        location = f"{path.name}:row {row_index}" + (f" ({material_id})" if material_id else "")
        collected.add(parsed[row_index], location, material_id, metadata)
    return collected.dataset(path, file_sha256(path), niggli=niggli)


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header (unnamed columns named like pandas: ``Unnamed: 0``) and non-blank rows."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if path.name.lower().endswith(".gz") and not gzipped:
        raise ValueError(
            f"{path}: not a gzip file (the name ends in .gz, the content is not gzip); "
            "rename it to .csv if it is plain text, or compress it with gzip"
        )
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise ValueError(f"{path}: empty file (no CSV header)") from None
            rows = [row for row in reader if row]
    except csv.Error as err:
        raise ValueError(f"{path}: malformed CSV ({err})") from err
    except (gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err})") from err
    header = [name.strip() or f"Unnamed: {i}" for i, name in enumerate(header)]
    return header, rows


def _cell(row: list[str], col: int | None) -> str | None:
    if col is None or col >= len(row):
        return None
    return row[col]


def _parse_value(text: str | None) -> Any:
    """A CSV cell as int, float or str; None for an empty cell."""
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text

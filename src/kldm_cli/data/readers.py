"""Read crystal datasets: CDVAE-style CSV (plain or gzipped), a folder of CIF files, extXYZ.

:func:`load_dataset` is the entry point. It picks the reader from the path, and keeps the parsed
records in a preprocessing cache keyed by the sha256 of the input, so that a dataset is parsed
once (parsing MP-20 takes seconds to minutes) and then loads in about a second.

Parsing follows the CDVAE / DiffCSP / KLDM-reference preprocessing: each CIF is read as pymatgen's
``Structure.from_str(cif, fmt="cif")`` would read it and, by default, its cell is Niggli-reduced
(``Structure.get_reduced_structure()``); the record keeps the six lattice parameters and the
fractional coordinates. Most benchmark CIFs are P1 files written by pymatgen; those take a fast
path (a small reader for that subset that reproduces pymatgen's result: same coordinates after its
rounding of 1/3 and 2/3, wrapped into [0, 1)); every other CIF goes through pymatgen's
``CifParser``.

A row, file or frame that cannot be used is never dropped silently: it becomes a
:class:`~kldm_cli.data.records.SkippedRow` with its location and the reason.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import math
import multiprocessing
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
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

logger = logging.getLogger(__name__)

#: Bump when parsing changes what a record holds: old cache entries are then ignored.
CACHE_FORMAT_VERSION = 1

#: With ``num_workers=None``, inputs with fewer CIFs than this are parsed in this process.
MIN_CIFS_FOR_WORKERS = 2000

#: CIFs per task handed to a worker process (also the granularity of progress reports).
CHUNK_SIZE = 256

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called while CIFs are parsed."""

#: One parsed structure: ``("ok", lengths [3], angles [3], frac_coords [K, 3], atomic_numbers [K])``
#: or ``("skip", kind, reason)``. Plain tuples keep the traffic with worker processes small.
ParseResult = tuple[Any, ...]


# --------------------------------------------------------------------------------------------
# Entry point and cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$KLDM_CACHE_DIR`` if set, else ``~/.cache/kldm/datasets``."""
    env = os.environ.get("KLDM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kldm" / "datasets"


def load_dataset(
    path: str | Path,
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    niggli: bool = True,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> CrystalDataset:
    """Read a dataset, using the preprocessing cache.

    Args:
        path: a CSV file (``.csv`` or ``.csv.gz``, CDVAE layout: one CIF per row in column
            ``cif``, optional ``material_id``, any other column kept in ``metadata``), a folder
            of ``.cif`` files, a single ``.cif`` file, or an extXYZ file (``.extxyz``/``.xyz``).
        cache_dir: where parsed datasets are kept (default: :func:`default_cache_dir`).
        use_cache: read and write the cache; ``False`` always parses and writes nothing.
        niggli: Niggli-reduce every cell (the CDVAE/DiffCSP/KLDM preprocessing).
        num_workers: processes that parse CIFs (default: up to 2, only for large inputs).
        progress: called as ``progress(done, total)`` while CIFs are parsed.

    Raises:
        ValueError: the path does not exist, has an unknown format, a CSV has no ``cif`` column,
            or a folder holds no ``.cif`` file. Bad rows are reported in ``dataset.skipped``.
    """
    path = Path(path).expanduser()
    kind = _source_kind(path)
    content_hash = _content_hash(path, kind)
    cache_path = None
    if use_cache:
        cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        variant = "niggli" if niggli else "raw"
        cache_path = cache_dir / f"{content_hash}-{kind}-{variant}-v{CACHE_FORMAT_VERSION}.npz"
        cached = _read_cache(cache_path, content_hash=content_hash, niggli=niggli)
        if cached is not None:
            cached.source = str(path)
            return cached

    readers = {"csv": read_csv, "cif_folder": read_cif_folder, "cif": read_cif_folder}
    if kind == "extxyz":
        dataset = read_extxyz(path, niggli=niggli)
    else:
        dataset = readers[kind](path, niggli=niggli, num_workers=num_workers, progress=progress)
    dataset.content_hash = content_hash
    if cache_path is not None:
        _write_cache(cache_path, dataset)
    return dataset


def _source_kind(path: Path) -> str:
    if not path.exists():
        raise ValueError(f"No such file or folder: {path}")
    if path.is_dir():
        return "cif_folder"
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".cif"):
        return "cif"
    if name.endswith((".extxyz", ".xyz")):
        return "extxyz"
    raise ValueError(
        f"Unknown dataset format for {path}: expected a .csv/.csv.gz file, a folder of .cif "
        "files, a .cif file or an .extxyz file"
    )


def _content_hash(path: Path, kind: str) -> str:
    """sha256 of the file, or of the sorted ``.cif`` file names and contents of a folder."""
    if kind != "cif_folder":
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in _cif_files(path):
        digest.update(file.name.encode() + b"\0" + file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (data files, weights files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_cache(cache_path: Path, dataset: CrystalDataset) -> None:
    """Store the dataset as one ``.npz`` (arrays + a JSON header); temp file, then rename."""
    records = dataset.records
    num_atoms = np.array([r.num_atoms for r in records], dtype=np.int64)
    header = {
        "format_version": CACHE_FORMAT_VERSION,
        "content_hash": dataset.content_hash,
        "niggli": dataset.niggli,
        "source": dataset.source,
        "material_ids": [r.material_id for r in records],
        "metadata": [r.metadata for r in records],
        "skipped": [[s.location, s.reason, s.kind] for s in dataset.skipped],
    }
    arrays = {
        "num_atoms": num_atoms,
        "frac_coords": _concat([r.frac_coords for r in records], (0, 3), np.float64),
        "atomic_numbers": _concat([r.atomic_numbers for r in records], (0,), np.int64),
        "lengths": _concat([r.lengths[None] for r in records], (0, 3), np.float64),
        "angles": _concat([r.angles[None] for r in records], (0, 3), np.float64),
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
    }
    tmp_name = None
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=cache_path.parent, prefix=f".{cache_path.name}.", suffix=".tmp", delete=False
        ) as handle:
            tmp_name = handle.name
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, cache_path)
    except OSError as err:
        logger.warning("Could not write the dataset cache %s (%s); continuing", cache_path, err)
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _concat(parts: Sequence[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if not parts:
        return np.zeros(empty_shape, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def _read_cache(cache_path: Path, *, content_hash: str, niggli: bool) -> CrystalDataset | None:
    """The cached dataset, or None if absent, unreadable or inconsistent (then it is rebuilt)."""
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        header = json.loads(arrays["header"].tobytes().decode())
        num_atoms = arrays["num_atoms"]
        num_crystals = len(num_atoms)
        ends = np.cumsum(num_atoms)
        consistent = (
            header["format_version"] == CACHE_FORMAT_VERSION
            and header["content_hash"] == content_hash
            and header["niggli"] == niggli
            and len(header["material_ids"]) == num_crystals
            and len(header["metadata"]) == num_crystals
            and arrays["lengths"].shape == (num_crystals, 3)
            and arrays["angles"].shape == (num_crystals, 3)
            and arrays["frac_coords"].shape == (int(ends[-1]) if num_crystals else 0, 3)
            and arrays["atomic_numbers"].shape == (arrays["frac_coords"].shape[0],)
        )
        if not consistent:
            raise ValueError("inconsistent cache content")
        starts = ends - num_atoms
        frac, numbers = arrays["frac_coords"], arrays["atomic_numbers"]
        lengths, angles = arrays["lengths"], arrays["angles"]
        records = [
            CrystalRecord(
                frac_coords=frac[start:end],
                lengths=lengths[i],
                angles=angles[i],
                atomic_numbers=numbers[start:end],
                material_id=header["material_ids"][i],
                metadata=header["metadata"][i],
            )
            for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
        ]
        skipped = [SkippedRow(*entry) for entry in header["skipped"]]
    except Exception as err:  # whatever is wrong with the file, it is rebuilt, never trusted
        logger.warning("Ignoring unreadable dataset cache %s (%s); rebuilding it", cache_path, err)
        return None
    return CrystalDataset(
        records=records,
        skipped=skipped,
        source=str(header["source"]),
        content_hash=content_hash,
        from_cache=True,
        niggli=niggli,
    )


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


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

    results = _parse_cifs([cif for _, cif in tasks], niggli, num_workers, progress, False)
    parsed = {row_index: blocks[0] for (row_index, _), blocks in zip(tasks, results, strict=True)}

    records: list[CrystalRecord] = []
    skipped_rows: list[SkippedRow] = []
    for row_index, (material_id, metadata) in enumerate(row_info):
        if row_index in skipped:
            skipped_rows.append(skipped[row_index])
            continue
        result = parsed[row_index]
        if result[0] == "skip":
            location = f"{path.name}:row {row_index}" + (f" ({material_id})" if material_id else "")
            skipped_rows.append(SkippedRow(location, result[2], result[1]))
            continue
        records.append(_record(result, material_id, metadata))
    return CrystalDataset(
        records=records,
        skipped=skipped_rows,
        source=str(path),
        content_hash=file_sha256(path),
        niggli=niggli,
    )


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


def _record(
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


# --------------------------------------------------------------------------------------------
# CIF files
# --------------------------------------------------------------------------------------------


def read_cif_folder(
    path: str | Path,
    *,
    niggli: bool = True,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> CrystalDataset:
    """Parse every ``*.cif`` file of a folder (sorted by name; not recursive), or one CIF file.

    ``material_id`` is the file name without ``.cif`` (``name#k`` for the k-th block of a file
    holding several structures); ``metadata`` holds ``file`` and the ``# kldm.<key>: <json>``
    comment lines written by :class:`~kldm_cli.data.writers.StructureWriter`.
    """
    from kldm_cli.data.writers import parse_cif_metadata

    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"No such file or folder: {path}")
    files = _cif_files(path) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"No .cif files in folder {path}")
    texts: list[str] = []
    skipped_by_file: dict[int, SkippedRow] = {}
    for i, file in enumerate(files):
        try:
            texts.append(file.read_text(encoding="utf-8", errors="replace"))
        except OSError as err:
            texts.append("")
            skipped_by_file[i] = SkippedRow(str(file), f"cannot read file ({err})", "unreadable")
    results = _parse_cifs(texts, niggli, num_workers, progress, True)

    records: list[CrystalRecord] = []
    skipped: list[SkippedRow] = []
    for i, (file, text, blocks) in enumerate(zip(files, texts, results, strict=True)):
        if i in skipped_by_file:
            skipped.append(skipped_by_file[i])
            continue
        metadata = {"file": file.name, **parse_cif_metadata(text)}
        for k, result in enumerate(blocks):
            location = str(file) if len(blocks) == 1 else f"{file}#{k}"
            if result[0] == "skip":
                skipped.append(SkippedRow(location, result[2], result[1]))
                continue
            material_id = file.stem if len(blocks) == 1 else f"{file.stem}#{k}"
            records.append(_record(result, material_id, dict(metadata)))
    return CrystalDataset(
        records=records,
        skipped=skipped,
        source=str(path),
        content_hash=_content_hash(path, "cif_folder" if path.is_dir() else "cif"),
        niggli=niggli,
    )


def _cif_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".cif" and p.is_file())


def record_from_cif(
    cif: str,
    *,
    material_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    niggli: bool = True,
) -> CrystalRecord:
    """One record from the text of a CIF (its first structure); ``ValueError`` if unusable."""
    result = _parse_cif(cif, niggli, all_blocks=False)[0]
    if result[0] == "skip":
        raise ValueError(result[2])
    return _record(result, material_id, dict(metadata or {}))


def _parse_cifs(
    texts: Sequence[str],
    niggli: bool,
    num_workers: int | None,
    progress: ProgressCallback | None,
    all_blocks: bool,
) -> list[list[ParseResult]]:
    """Parse CIF texts, in worker processes for large inputs; results in input order."""
    total = len(texts)
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1) if total >= MIN_CIFS_FOR_WORKERS else 1
    chunks = [list(texts[i : i + CHUNK_SIZE]) for i in range(0, total, CHUNK_SIZE)]
    args = [(chunk, niggli, all_blocks) for chunk in chunks]
    results: list[list[ParseResult]] = []
    if progress is not None:
        progress(0, total)
    pool = None
    if num_workers > 1 and len(chunks) > 1:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        try:
            pool = context.Pool(processes=num_workers)
        except (AssertionError, OSError) as err:  # e.g. inside a daemonic DataLoader worker
            logger.info("Parsing in this process: cannot start workers (%s)", err)
    if pool is not None:
        with pool:
            for chunk_results in pool.imap(_parse_chunk, args):
                results.extend(chunk_results)
                if progress is not None:
                    progress(len(results), total)
    else:
        for arg in args:
            results.extend(_parse_chunk(arg))
            if progress is not None:
                progress(len(results), total)
    return results


def _parse_chunk(args: tuple[list[str], bool, bool]) -> list[list[ParseResult]]:
    texts, niggli, all_blocks = args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [_parse_cif(text, niggli, all_blocks) for text in texts]


def _parse_cif(text: str, niggli: bool, all_blocks: bool) -> list[ParseResult]:
    """Parse one CIF text into one result per structure (only the first unless ``all_blocks``)."""
    fast = _parse_p1_cif(text)
    if fast is not None:
        return [_finish(*fast, niggli=niggli)]
    try:
        from pymatgen.io.cif import CifParser

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(text).parse_structures(primitive=False)
    except Exception as err:  # pymatgen raises many kinds of errors on bad input
        message = " ".join(str(err).split())[:200] or type(err).__name__
        return [("skip", "invalid_cif", f"invalid CIF: {message}")]
    if not structures:
        return [("skip", "invalid_cif", "invalid CIF: no structure in it")]
    results = []
    for structure in structures if all_blocks else structures[:1]:
        if not structure.is_ordered:
            formula = structure.composition.formula
            results.append(
                ("skip", "disordered", f"disordered structure {formula!r} (partial occupancies)")
            )
            continue
        try:
            atomic_numbers = np.array(structure.atomic_numbers, dtype=np.int64)
        except (AttributeError, ValueError) as err:
            results.append(("skip", "invalid_species", f"species without an element ({err})"))
            continue
        results.append(
            _finish(
                np.array(structure.lattice.abc, dtype=np.float64),
                np.array(structure.lattice.angles, dtype=np.float64),
                np.asarray(structure.frac_coords, dtype=np.float64),
                atomic_numbers,
                niggli=niggli,
            )
        )
    return results


def _finish(
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


# The fast path: P1 CIFs in the layout pymatgen's CifWriter produces (all benchmark CSVs).

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


# --------------------------------------------------------------------------------------------
# extXYZ
# --------------------------------------------------------------------------------------------


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
    records: list[CrystalRecord] = []
    skipped: list[SkippedRow] = []
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
            skipped.append(
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
            skipped.append(
                SkippedRow(
                    location,
                    f"not periodic in 3 directions (pbc={atoms.pbc.tolist()})",
                    "invalid_cell",
                )
            )
            continue
        cellpar = atoms.cell.cellpar()
        result = _finish(
            np.array(cellpar[:3], dtype=np.float64),
            np.array(cellpar[3:], dtype=np.float64),
            _scaled_positions(atoms),
            np.array(atoms.numbers, dtype=np.int64),
            niggli=niggli,
        )
        if result[0] == "skip":
            skipped.append(SkippedRow(location, result[2], result[1]))
            continue
        records.append(_record(result, material_id, info))
    return CrystalDataset(
        records=records,
        skipped=skipped,
        source=str(path),
        content_hash=file_sha256(path),
        niggli=niggli,
    )


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


__all__ = [
    "CACHE_FORMAT_VERSION",
    "default_cache_dir",
    "load_dataset",
    "read_csv",
    "read_cif_folder",
    "read_extxyz",
    "record_from_cif",
]

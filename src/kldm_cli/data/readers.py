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

from pathlib import Path

from kldm_cli.data.cache import (
    CACHE_FORMAT_VERSION,
    default_cache_dir,
    file_sha256,
    files_sha256,
    read_cache,
    write_cache,
)
from kldm_cli.data.cdvae_csv import read_csv
from kldm_cli.data.cif import cif_files, read_cif_folder, record_from_cif
from kldm_cli.data.extxyz import read_extxyz
from kldm_cli.data.parsed import ProgressCallback
from kldm_cli.data.records import CrystalDataset

__all__ = [
    "default_cache_dir",
    "file_sha256",
    "load_dataset",
    "read_cif_folder",
    "read_csv",
    "read_extxyz",
    "record_from_cif",
]


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
        cached = read_cache(cache_path, content_hash=content_hash, niggli=niggli)
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
        write_cache(cache_path, dataset)
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
    return files_sha256(cif_files(path)) if kind == "cif_folder" else file_sha256(path)

"""CIF files: one CIF text to records (fast P1 path, else pymatgen's ``CifParser``), many in
worker processes, and a folder of ``.cif`` files as a dataset."""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kldm_cli.data.cache import file_sha256, files_sha256
from kldm_cli.data.cif_p1 import _parse_p1_cif
from kldm_cli.data.parsed import (
    DatasetCollector,
    ParseResult,
    ProgressCallback,
    check_parsed_cell,
    record_from_result,
)
from kldm_cli.data.records import CrystalDataset, CrystalRecord, SkippedRow

logger = logging.getLogger(__name__)

#: With ``num_workers=None``, inputs with fewer CIFs than this are parsed in this process.
MIN_CIFS_FOR_WORKERS = 2000

#: CIFs per task handed to a worker process (also the granularity of progress reports).
CHUNK_SIZE = 256


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
    files = cif_files(path) if path.is_dir() else [path]
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
    results = parse_cifs(texts, niggli, num_workers, progress, True)

    collected = DatasetCollector()
    for i, (file, text, blocks) in enumerate(zip(files, texts, results, strict=True)):
        if i in skipped_by_file:
            collected.skipped.append(skipped_by_file[i])
            continue
        metadata = {"file": file.name, **parse_cif_metadata(text)}
        for k, result in enumerate(blocks):
            one = len(blocks) == 1
            location, material_id = (
                (str(file), file.stem) if one else (f"{file}#{k}", f"{file.stem}#{k}")
            )
            collected.add(result, location, material_id, dict(metadata))
    content_hash = files_sha256(files) if path.is_dir() else file_sha256(path)
    return collected.dataset(path, content_hash, niggli=niggli)


def cif_files(folder: Path) -> list[Path]:
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
    return record_from_result(result, material_id, dict(metadata or {}))


def parse_cifs(
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
        return [check_parsed_cell(*fast, niggli=niggli)]
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
            check_parsed_cell(
                np.array(structure.lattice.abc, dtype=np.float64),
                np.array(structure.lattice.angles, dtype=np.float64),
                np.asarray(structure.frac_coords, dtype=np.float64),
                atomic_numbers,
                niggli=niggli,
            )
        )
    return results

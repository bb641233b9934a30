"""The preprocessing cache of parsed datasets (one ``.npz`` per input, keyed by its sha256) and
the content hashes it is keyed by."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kldm_cli.data.records import CrystalDataset, CrystalRecord, SkippedRow

logger = logging.getLogger(__name__)

#: Bump when parsing changes what a record holds: old cache entries are then ignored.
CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$KLDM_CACHE_DIR`` if set, else ``~/.cache/kldm/datasets``."""
    env = os.environ.get("KLDM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kldm" / "datasets"


def files_sha256(files: Sequence[Path]) -> str:
    """sha256 of the names and contents of ``files`` (in the order given): a folder's hash."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (data files, weights files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_cache(cache_path: Path, dataset: CrystalDataset) -> None:
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


def read_cache(cache_path: Path, *, content_hash: str, niggli: bool) -> CrystalDataset | None:
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

"""Record I/O of ``kldm evaluate``: the JSON record, its inputs (sha256 of data and weights),
library versions, the chunk of a dataset a run scores and the time stamp.

Shared by the CSP and DNG runs (:mod:`~kldm_cli.evaluation.csp_run`,
:mod:`~kldm_cli.evaluation.dng_run`) and by :mod:`~kldm_cli.evaluation.combine`.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: ``progress(message)``: called when a stage starts.
Progress = Callable[[str], None]


def library_versions() -> dict[str, str | None]:
    """Versions of kldm and of the libraries that decide the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from kldm_cli import __version__

    versions: dict[str, str | None] = {
        "kldm": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for package in ("pymatgen", "pymatgen-core", "numpy", "scipy", "smact", "matminer", "chgnet"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def json_safe(value: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python numbers, tuples → lists (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_record(record: dict[str, Any], out: str | Path) -> Path:
    """Write ``record`` as indented strict JSON (parent folders created)."""
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    return path


def finish_record(record: dict[str, Any], out: str | Path | None) -> dict[str, Any]:
    """Write ``record`` to ``out`` if given; return it as strict JSON values (:func:`json_safe`)."""
    if out is not None:
        write_record(record, out)
    return json_safe(record)


def weights_info(weights: str | None, resolve: bool) -> dict[str, Any]:
    """Where the weights came from and the sha256 of their ``model.safetensors``."""
    info: dict[str, Any] = {"spec": weights, "path": None, "sha256": None}
    folder: Path | None = None
    if weights is not None and Path(weights).expanduser().is_dir():
        folder = Path(weights).expanduser()
    elif resolve:  # the hub copy is cached: sampling then loads it without downloading again
        from kldm_cli.hub import resolve_weights

        try:
            folder = resolve_weights(weights, "csp").path
        except (ValueError, OSError):
            folder = None
    if folder is not None:
        info["path"] = str(folder)
        safetensors = folder / "model.safetensors"
        if safetensors.is_file():
            from kldm_cli.data.readers import file_sha256

            info["sha256"] = file_sha256(safetensors)
    return info


def read_dataset(path: str | Path, *, niggli: bool, use_cache: bool) -> Any:
    """:func:`kldm_cli.data.readers.load_dataset` (imported when first called)."""
    from kldm_cli.data.readers import load_dataset

    return load_dataset(path, niggli=niggli, use_cache=use_cache)


def dataset_info(path: str | Path, dataset: Any, used: int) -> dict[str, Any]:
    """A record's entry for a data file: path, sha256, records read, skipped and used."""
    return {
        "path": str(path),
        "sha256": dataset.content_hash,
        "num_records": len(dataset.records),
        "num_skipped": len(dataset.skipped),
        "num_used": used,
    }


def check_chunk(start: int, limit: int | None) -> None:
    """Refuse a negative ``start`` or a ``limit`` below 1 (before anything is read)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of structures, got {limit}")
    if start < 0:
        raise ValueError(f"start must be an index ≥ 0, got {start}")


def read_chunk(
    path: str | Path, start: int, limit: int | None, what: str, *, niggli: bool, use_cache: bool
) -> tuple[Any, list]:
    """Read the dataset at ``path`` and its chunk (:func:`select_chunk`): (dataset, records)."""
    dataset = read_dataset(path, niggli=niggli, use_cache=use_cache)
    return dataset, select_chunk(dataset.records, start, limit, path, what)


def select_chunk(
    records: Sequence[Any], start: int, limit: int | None, source: Any, what: str
) -> list:
    """``limit`` of ``records`` from index ``start`` (all from ``start`` if ``limit`` is None)."""
    if records and start >= len(records):
        raise ValueError(
            f"start {start} is past the last {what}: {source} holds {len(records)} readable "
            "structures"
        )
    selected = list(records[start : None if limit is None else start + limit])
    if not selected:
        raise ValueError(f"{source} holds no usable structure")
    return selected


def utc_now() -> str:
    """The time now in UTC, ISO 8601 to the second (a record's ``created``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def common_metadata(records: Sequence[Any]) -> dict[str, Any]:
    """Metadata values shared by every sample (e.g. the model, sampler and seed that made them)."""
    if not records:
        return {}
    common = {k: v for k, v in records[0].metadata.items() if k not in ("file", "sample_index")}
    for record in records[1:]:
        common = {k: v for k, v in common.items() if record.metadata.get(k) == v}
    return common

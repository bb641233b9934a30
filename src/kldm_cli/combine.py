"""Merge DNG stability measured in chunks into the record of the whole sample set.

CHGNet stability costs 10–20 s per sample on one CPU core, so 1,000 samples are measured in
chunks (``kldm evaluate dng --start S --limit N``, or one folder per chunk), on several cores or
over several sessions. :func:`combine_dng_records` takes the record of the whole set (usually
``--no-stability``: validity, uniqueness, novelty, coverage) and the chunks' records, and returns
the whole set's record with E_hull, stable and S.U.N. per sample and stability metrics over the
measured samples.

Merging is exact: a sample's E_hull depends only on its own relaxation and on the reference
structures of its own chemical system (:func:`kldm_cli.metrics.stability.energies_above_hull`),
never on which other samples shared its chunk. S.U.N. is recomputed with the whole set's
uniqueness flags (a chunk only sees duplicates inside itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Settings that must agree between the chunks: they decide E_hull.
STABILITY_SETTINGS = ("relax_steps", "reference_relax_steps", "elemental_crystals", "fmax")

#: Per-sample fields taken from the chunks.
STABILITY_FIELDS = ("energy_per_atom", "e_above_hull")


def combine_dng_records(
    base: dict[str, Any],
    parts: Sequence[dict[str, Any]],
    *,
    base_name: str = "base",
    part_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``base`` DNG record with the stability of the samples measured in ``parts``.

    Samples are matched by ``material_id`` (for a CIF folder, the file name) and checked by
    reduced formula. Raises ``ValueError`` naming the record when a part is not a DNG stability
    record, was made from other samples (sampling metadata or a formula differs), measured a
    sample already measured by another part, or used other stability settings or hull files
    than the first part. ``base_name`` and ``part_names`` (e.g. file paths) name the records in
    errors and in ``inputs.stability_records``.
    """
    from kldm_cli.evaluate import _now
    from kldm_cli.metrics.stability import STABILITY_THRESHOLD, stability_metrics

    names = list(part_names) if part_names is not None else [f"part {i}" for i in range(len(parts))]
    if len(names) != len(parts):
        raise ValueError(f"{len(parts)} records but {len(names)} names")
    if not parts:
        raise ValueError("no stability record to combine")
    _check_dng(base, base_name)
    by_id = _index_by_material_id(base, base_name)
    reference_part = parts[0]
    measured: dict[str, dict[str, Any]] = {}
    measured_by: dict[str, str] = {}
    for part, name in zip(parts, names, strict=True):
        _check_part(part, name, reference_part, names[0], base, base_name)
        for entry in part["per_sample"]:
            sample = entry["material_id"]
            if sample not in by_id:
                raise ValueError(f"{name}: sample {sample!r} is not in {base_name}")
            if entry["formula"] != by_id[sample]["formula"]:
                raise ValueError(
                    f"{name}: sample {sample!r} is {entry['formula']} but "
                    f"{by_id[sample]['formula']} in {base_name}: not the same samples"
                )
            if sample in measured_by:
                raise ValueError(f"sample {sample!r} is in both {measured_by[sample]} and {name}")
            measured[sample], measured_by[sample] = entry, name

    per_sample = [dict(entry) for entry in base["per_sample"]]
    done = [entry for entry in per_sample if entry["material_id"] in measured]
    for entry in done:
        for field in STABILITY_FIELDS:
            entry[field] = measured[entry["material_id"]][field]
    threshold = reference_part["metrics"].get("stability_threshold", STABILITY_THRESHOLD)
    result = stability_metrics(
        [entry["e_above_hull"] for entry in done],
        [entry["unique"] for entry in done],
        [entry["novel"] for entry in done],
        threshold=threshold,
    )
    for entry, stable, sun in zip(done, result.is_stable, result.is_sun, strict=True):
        entry["stable"], entry["sun"] = stable, sun
    metrics = {
        **{k: v for k, v in base["metrics"].items() if k not in _STABILITY_METRICS},
        "num_stability_samples": len(done),
        "stable_rate": result.stable_rate,
        "sun_rate": result.sun_rate,
        "num_hull_unknown": result.num_unknown,
        "num_relax_failed": sum(
            entry["structurally_valid"] and entry["energy_per_atom"] is None for entry in done
        ),
        "mean_e_above_hull": result.mean_e_above_hull,
        "stability_threshold": threshold,
    }
    settings = {
        **base["settings"],
        **{k: reference_part["settings"][k] for k in STABILITY_SETTINGS},
        "stability": True,
        "stability_samples": (
            f"{len(done)} of {len(per_sample)} samples, measured in {len(parts)} records"
        ),
    }
    inputs = {
        **base["inputs"],
        "hull_reference": _merged_hull_info([part["inputs"]["hull_reference"] for part in parts]),
        "stability_records": [
            {
                "name": name,
                "created": part.get("created"),
                "samples": part["inputs"]["samples"],
                "num_samples": len(part["per_sample"]),
                "threads": part["settings"].get("threads"),
                "stability_s": part.get("timing_s", {}).get("stability"),
            }
            for part, name in zip(parts, names, strict=True)
        ],
    }
    timing = {
        **base.get("timing_s", {}),
        "stability": sum(part.get("timing_s", {}).get("stability", 0.0) for part in parts),
    }
    return {
        "task": "dng",
        "created": _now(),
        "combined_from": {"base": base_name, "stability": names},
        "metrics": metrics,
        "settings": settings,
        "inputs": inputs,
        "versions": base.get("versions"),
        "timing_s": timing,
        "per_sample": per_sample,
    }


_STABILITY_METRICS = frozenset(
    {
        "stable_rate",
        "sun_rate",
        "num_hull_unknown",
        "num_relax_failed",
        "mean_e_above_hull",
        "stability_threshold",
        "num_stability_samples",
    }
)


def _check_dng(record: dict[str, Any], name: str) -> None:
    if record.get("task") != "dng" or "per_sample" not in record:
        raise ValueError(f"{name} is not a `kldm evaluate dng` record")


def _index_by_material_id(record: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for entry in record["per_sample"]:
        if entry["material_id"] in by_id:
            raise ValueError(f"{name}: sample {entry['material_id']!r} appears twice")
        by_id[entry["material_id"]] = entry
    return by_id


def _check_part(
    part: dict[str, Any],
    name: str,
    first: dict[str, Any],
    first_name: str,
    base: dict[str, Any],
    base_name: str,
) -> None:
    """``part`` is a stability record of the same samples, settings and hull files as ``first``."""
    _check_dng(part, name)
    if not part["settings"].get("stability"):
        raise ValueError(f"{name} has no stability (it was made with --no-stability)")
    made_by = base["settings"].get("samples_metadata", {})
    if part["settings"].get("samples_metadata", {}) != made_by:
        raise ValueError(
            f"{name} scored samples made with {part['settings'].get('samples_metadata')}, "
            f"{base_name} samples made with {made_by}"
        )
    for key in STABILITY_SETTINGS:
        if part["settings"].get(key) != first["settings"].get(key):
            raise ValueError(
                f"{name} used {key} = {part['settings'].get(key)!r} but {first_name} used "
                f"{first['settings'].get(key)!r}"
            )
    if _hull_files(part) != _hull_files(first):
        raise ValueError(f"{name} built its hull from other files than {first_name}")


def _merged_hull_info(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One ``hull_reference`` entry for all chunks: the (shared) files, the union of the elements
    with an elemental reference and of the ASE crystals added, and the structures evaluated
    summed over chunks (a structure relevant to two chunks is counted twice)."""
    merged = dict(infos[0])
    for key in ("elements_with_reference", "elemental_crystals"):
        merged[key] = sorted(set().union(*(info.get(key, []) for info in infos)))
    for key in ("num_structures_evaluated", "num_failed"):
        merged[key] = sum(info.get(key, 0) for info in infos)
    return merged


def _hull_files(record: dict[str, Any]) -> list[Any]:
    files = record["inputs"].get("hull_reference", {}).get("files", [])
    return [f.get("sha256") if isinstance(f, dict) else f for f in files]


def load_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read JSON records, naming the file that is missing or not JSON."""
    import json

    records = []
    for path in paths:
        try:
            records.append(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such record") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a JSON record: {error}") from None
    return records

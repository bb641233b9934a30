"""Merge evaluation records made in chunks: DNG stability (:func:`combine_dng_records`) and
CSP match rates (:func:`combine_csp_records`).

CSP with k = 20 samples 20 candidates per test row, so a 1,000-row test set is evaluated in
chunks of rows (``kldm evaluate csp --start S --limit N``, or one CSV per chunk). MR@k, RMSE and
the counts are sums and means over targets and each target's outcome depends only on its own
candidates, so the merged record is the record of one run over the union of the rows.

CHGNet stability costs 10–20 s per sample on one CPU core, so 1,000 samples are measured in
chunks (``kldm evaluate dng --start S --limit N``, or one folder per chunk), on several cores or
over several sessions. :func:`combine_dng_records` takes the record of the whole set (usually
``--no-stability``: validity, uniqueness, novelty, coverage) and the chunks' records, and returns
the whole set's record with E_hull, stable and S.U.N. per sample and stability metrics over the
measured samples.

Merging is exact: a sample's E_hull depends only on its own relaxation and on the reference
structures of its own chemical system
(:func:`kldm_cli.evaluation.metrics.stability.energies_above_hull`), never on which other samples
shared its chunk. S.U.N. is recomputed with the whole set's uniqueness flags (a chunk only sees
duplicates inside itself) and the chunks' novelty against the known structures (``novel_vs_known``,
per sample; records from before it use ``novel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kldm_cli.evaluation.records import dataset_info, read_dataset, utc_now

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
    from kldm_cli.evaluation.metrics.stability import STABILITY_THRESHOLD, stability_metrics

    names = _part_names(parts, part_names)
    check_dng(base, base_name)
    by_id = index_by_material_id(base, base_name)
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
        if "novel_vs_known" in measured[entry["material_id"]]:
            entry["novel_vs_known"] = measured[entry["material_id"]]["novel_vs_known"]
    threshold = reference_part["metrics"].get("stability_threshold", STABILITY_THRESHOLD)
    result = stability_metrics(
        [entry["e_above_hull"] for entry in done],
        [entry["unique"] for entry in done],
        [entry.get("novel_vs_known", entry["novel"]) for entry in done],
        threshold=threshold,
    )
    for entry, stable, sun in zip(done, result.is_stable, result.is_sun, strict=True):
        entry["stable"], entry["sun"] = stable, sun
    metrics = {
        **{k: v for k, v in base["metrics"].items() if k not in _STABILITY_METRICS},
        "num_stability_samples": len(done),
        "hull": reference_part["metrics"].get("hull"),
        "stable_rate": result.stable_rate,
        "sun_rate": result.sun_rate,
        "novelty_vs_known": (
            sum(entry["novel_vs_known"] for entry in done) / len(done)
            if done and all("novel_vs_known" in entry for entry in done)
            else None
        ),
        "num_hull_unknown": result.num_unknown,
        "below_hull_rate": result.below_hull_rate,
        "far_below_hull_rate": result.far_below_hull_rate,
        "no_hull_rate": result.no_hull_rate,
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
        "created": utc_now(),
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
        "hull",
        "stable_rate",
        "sun_rate",
        "novelty_vs_known",
        "num_hull_unknown",
        "below_hull_rate",
        "far_below_hull_rate",
        "no_hull_rate",
        "num_relax_failed",
        "mean_e_above_hull",
        "stability_threshold",
        "num_stability_samples",
    }
)


#: CSP settings that must agree between the chunks: they decide the candidates and the matching.
CSP_SETTINGS = ("k", "sampler", "steps", "grid", "matcher", "timeout_s", "validity")


def combine_csp_records(
    parts: Sequence[dict[str, Any]],
    *,
    part_names: Sequence[str] | None = None,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """One CSP record of the targets evaluated in ``parts`` (``kldm evaluate csp`` records).

    Targets are matched by ``material_id``. With ``data`` (the whole test file), every target
    must be a row of it with the same formula; targets are put in the file's order, indexed by
    their row, and the record says how many of the file's rows were evaluated. Without it, the
    parts must come from one test file (``--start``/``--limit`` chunks). Raises ``ValueError``
    naming the record when a part is not a CSP record, used other weights or CSP settings than
    the first part, or evaluated a target already evaluated by another part.
    """
    from kldm_cli.evaluation.metrics.csp import TargetMatch, csp_result

    names = _part_names(parts, part_names)
    first, first_name = parts[0], names[0]
    evaluated_by: dict[str, str] = {}
    per_target: list[dict[str, Any]] = []
    for part, name in zip(parts, names, strict=True):
        _check_csp_part(part, name, first, first_name, whole_file=data is not None)
        for entry in part["per_target"]:
            target = entry["material_id"]
            if target in evaluated_by:
                raise ValueError(f"target {target!r} is in both {evaluated_by[target]} and {name}")
            evaluated_by[target] = name
            per_target.append(dict(entry))
    data_info = first["inputs"]["data"]
    if data is not None:
        data_info = _place_in_file(per_target, data, evaluated_by)
    fields = TargetMatch.__dataclass_fields__
    result = csp_result([TargetMatch(**{f: e[f] for f in fields}) for e in per_target])
    settings = {k: v for k, v in first["settings"].items() if k not in _CHUNK_SETTINGS}
    settings["targets"] = (
        f"{len(per_target)} of {data_info['num_records']} test rows, in {len(parts)} records"
    )
    combined = {
        "task": "csp",
        "created": utc_now(),
        "combined_from": names,
        "metrics": {"k": first["settings"]["k"], **result.summary()},
        "settings": settings,
        "inputs": {
            "data": {**data_info, "num_used": len(per_target)},
            "weights": first["inputs"]["weights"],
            "csp_records": [
                _csp_part_info(part, name) for part, name in zip(parts, names, strict=True)
            ],
        },
        "versions": first.get("versions"),
        "timing_s": {
            stage: sum(part.get("timing_s", {}).get(stage, 0.0) for part in parts)
            for stage in ("reading", "sampling", "matching", "total")
        },
        "per_target": per_target,
    }
    if "ranked" in first:
        combined["ranked"] = _combine_ranked(parts, names, per_target)
    return combined


def _combine_ranked(
    parts: Sequence[dict[str, Any]], names: Sequence[str], per_target: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The ``ranked`` section (``kldm evaluate csp --rank``) of the union of ``parts``: every
    part must have one, with the settings of the first."""
    from kldm_cli.evaluation.ranked import ranked_metrics, with_later_settings

    first = with_later_settings(parts[0]["ranked"]["settings"])
    for part, name in zip(parts, names, strict=True):
        if "ranked" not in part:
            raise ValueError(f"{name} has no ranked search (--rank) but {names[0]} has")
        if with_later_settings(part["ranked"]["settings"]) != first:
            raise ValueError(f"{name} ranked its candidates with other settings than {names[0]}")
    metrics = ranked_metrics([entry["search"] for entry in per_target])
    sampling = sum(part["timing_s"]["sampling"] for part in parts)
    metrics["sampling_seconds_per_composition"] = sampling / max(1, len(per_target))
    return {
        "metrics": metrics,
        "settings": first,
        "timing_s": {
            stage: sum(part["ranked"]["timing_s"][stage] for part in parts)
            for stage in ("search", "matching")
        },
    }


#: Settings of one chunk's run, listed per part in ``inputs.csp_records`` instead.
_CHUNK_SETTINGS = frozenset(
    {"start", "limit", "seed", "threads", "workers", "device", "batch_atoms"}
)


def _check_csp_part(
    part: dict[str, Any], name: str, first: dict[str, Any], first_name: str, *, whole_file: bool
) -> None:
    check_csp(part, name)
    _check_same_settings(part, name, first, first_name, CSP_SETTINGS)
    weights, first_weights = part["inputs"]["weights"], first["inputs"]["weights"]
    if weights.get("sha256") != first_weights.get("sha256"):
        raise ValueError(f"{name} evaluated other weights than {first_name} (sha256 differs)")
    if not whole_file and part["inputs"]["data"]["sha256"] != first["inputs"]["data"]["sha256"]:
        raise ValueError(
            f"{name} and {first_name} evaluated different test files; give the whole test "
            "file (--data) to combine chunks cut from it"
        )


def _place_in_file(
    per_target: list[dict[str, Any]], data: str | Path, evaluated_by: dict[str, str]
) -> dict[str, Any]:
    """Re-index ``per_target`` (in place) by row of the test file ``data`` and sort it by row;
    return the file's ``inputs.data`` entry."""

    dataset = read_dataset(data, niggli=True, use_cache=True)  # as evaluate_csp reads it
    rows: dict[str, tuple[int, str]] = {}
    for row, record in enumerate(dataset.records):
        if record.material_id in rows:
            raise ValueError(f"{data}: material_id {record.material_id!r} appears twice")
        rows[record.material_id] = (row, record.formula)
    for entry in per_target:
        target, name = entry["material_id"], evaluated_by[entry["material_id"]]
        if target not in rows:
            raise ValueError(f"{name}: target {target!r} is not in {data}")
        if entry["formula"] != rows[target][1]:
            raise ValueError(
                f"{name}: target {target!r} is {entry['formula']} but {rows[target][1]} in {data}"
            )
        entry["index"] = rows[target][0]
    per_target.sort(key=lambda entry: entry["index"])
    return dataset_info(data, dataset, len(per_target))


def _csp_part_info(part: dict[str, Any], name: str) -> dict[str, Any]:
    settings = part["settings"]
    return {
        "name": name,
        "created": part.get("created"),
        "data": part["inputs"]["data"]["path"],
        "data_sha256": part["inputs"]["data"]["sha256"],
        "num_targets": len(part["per_target"]),
        **{key: settings.get(key) for key in sorted(_CHUNK_SETTINGS)},
        "sampling_s": part.get("timing_s", {}).get("sampling"),
    }


def _part_names(parts: Sequence[dict[str, Any]], part_names: Sequence[str] | None) -> list[str]:
    names = list(part_names) if part_names is not None else [f"part {i}" for i in range(len(parts))]
    if len(names) != len(parts):
        raise ValueError(f"{len(parts)} records but {len(names)} names")
    if not parts:
        raise ValueError("no record to combine")
    return names


def _check_same_settings(
    part: dict[str, Any], name: str, first: dict[str, Any], first_name: str, keys: Sequence[str]
) -> None:
    """``part`` used the same value of each setting in ``keys`` as ``first``."""
    for key in keys:
        if part["settings"].get(key) != first["settings"].get(key):
            raise ValueError(
                f"{name} used {key} = {part['settings'].get(key)!r} but {first_name} used "
                f"{first['settings'].get(key)!r}"
            )


def check_csp(record: dict[str, Any], name: str) -> None:
    """``record`` is a ``kldm evaluate csp`` record (``name`` names it in the error)."""
    if record.get("task") != "csp" or "per_target" not in record:
        raise ValueError(f"{name} is not a `kldm evaluate csp` record")


def check_dng(record: dict[str, Any], name: str) -> None:
    """``record`` is a ``kldm evaluate dng`` record (``name`` names it in the error)."""
    if record.get("task") != "dng" or "per_sample" not in record:
        raise ValueError(f"{name} is not a `kldm evaluate dng` record")


def index_by_material_id(
    record: dict[str, Any], name: str, entries: str = "per_sample"
) -> dict[str, dict[str, Any]]:
    """material_id → entry of ``record[entries]`` (``per_sample`` of a DNG record, ``per_target``
    of a CSP record), in the record's order; an id listed twice is an error naming ``name``."""
    noun = "target" if entries == "per_target" else "sample"
    by_id: dict[str, dict[str, Any]] = {}
    for entry in record[entries]:
        if entry["material_id"] in by_id:
            raise ValueError(f"{name}: {noun} {entry['material_id']!r} appears twice")
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
    check_dng(part, name)
    if not part["settings"].get("stability"):
        raise ValueError(f"{name} has no stability (it was made with --no-stability)")
    made_by = base["settings"].get("samples_metadata", {})
    if part["settings"].get("samples_metadata", {}) != made_by:
        raise ValueError(
            f"{name} scored samples made with {part['settings'].get('samples_metadata')}, "
            f"{base_name} samples made with {made_by}"
        )
    _check_same_settings(part, name, first, first_name, STABILITY_SETTINGS)
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
    """Read JSON records (``.json``, or gzip-compressed ``.json.gz``), naming the file that is
    missing or not JSON."""
    import gzip
    import json

    records = []
    for path in map(Path, paths):
        try:
            raw = path.read_bytes()
            records.append(json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such record") from None
        except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
            raise ValueError(f"{path} is not a JSON record: {error}") from None
    return records

"""Library entry points behind ``kldm evaluate``: CSP and DNG benchmarks with a full record.

:func:`evaluate_csp` samples ``k`` candidates per test composition, matches them against the test
structures (:func:`~kldm_cli.metrics.csp.match_structures`) and returns MR@k and RMSE.
:func:`evaluate_dng` scores a set of generated structures: validity, uniqueness, novelty,
coverage, Wasserstein distances and, with CHGNet, stability and S.U.N.

Both return a JSON-ready dict and, given ``out``, write it: every number, the exact settings,
the sha256 of the weights and data files, library versions and the time spent in each stage.
See ``docs/evaluation.md`` for the definitions.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from kldm_cli.candidate_log import CandidateLog

#: ``sampler_fn(weights, compositions, num_samples, *, sampler, steps, seed, device, grid,
#: batch_atoms, on_batch, done)`` → one list of ``num_samples`` candidate structures per
#: composition (``kldm_cli.sampling.pipeline.sample_csp``).
CSPSampler = Callable[..., list[list[Structure]]]

#: ``progress(message)``: called when a stage starts.
Progress = Callable[[str], None]

SAMPLERS = ("pc", "em")


# ---------------------------------------------------------------------- record helpers
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


def _json_safe(value: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python numbers, tuples → lists (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_record(record: dict[str, Any], out: str | Path) -> Path:
    """Write ``record`` as indented strict JSON (parent folders created)."""
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(record), indent=2, allow_nan=False) + "\n")
    return path


def _weights_info(weights: str | None, resolve: bool) -> dict[str, Any]:
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


def _load(path: str | Path, *, niggli: bool, use_cache: bool) -> Any:
    from kldm_cli.data.readers import load_dataset

    return load_dataset(path, niggli=niggli, use_cache=use_cache)


def _dataset_info(path: str | Path, dataset: Any, used: int) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": dataset.content_hash,
        "num_records": len(dataset.records),
        "num_skipped": len(dataset.skipped),
        "num_used": used,
    }


def _check_chunk(start: int, limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of structures, got {limit}")
    if start < 0:
        raise ValueError(f"start must be an index ≥ 0, got {start}")


def _chunk(records: Sequence[Any], start: int, limit: int | None, source: Any, what: str) -> list:
    """``limit`` of ``records`` from index ``start`` (all from ``start`` if ``limit`` is None)."""
    if records and start >= len(records):
        raise ValueError(
            f"start {start} is past the last {what}: {source} holds {len(records)} readable "
            "structures"
        )
    chunk = list(records[start : None if limit is None else start + limit])
    if not chunk:
        raise ValueError(f"{source} holds no usable structure")
    return chunk


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- CSP
def evaluate_csp(
    data: str | Path,
    *,
    weights: str | None = None,
    k: int = 1,
    limit: int | None = None,
    start: int = 0,
    sampler: str = "pc",
    steps: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    grid: str | None = None,
    threads: int | None = None,
    batch_atoms: int | None = None,
    workers: int = 2,
    timeout: float | None = 30.0,
    out: str | Path | None = None,
    sampler_fn: CSPSampler | None = None,
    progress: Progress | None = None,
    search: Any = None,
    chgnet: Any = None,
) -> dict[str, Any]:
    """MR@k and RMSE of a CSP model on the test structures in ``data``.

    With ``search`` (a :class:`kldm_cli.search.SearchSettings`) the ``k`` candidates of each
    composition are also relaxed and ranked, and the record gets a ``ranked`` section: raw MR@1
    and MR@k next to ranked top-1/3/5 (:mod:`kldm_cli.ranked`). ``chgnet`` reuses a loaded
    CHGNet (tests pass a fake one).

    Samples ``k`` candidates for the composition of each of ``limit`` test structures from index
    ``start`` (all if None; records of chunks are merged with
    :func:`kldm_cli.combine.combine_csp_records`) with ``sampler`` ("pc" or "em") in ``steps``
    steps from ``seed`` on the time ``grid`` (default: the model's), in batches of
    ``batch_atoms`` atoms on ``threads`` CPU threads (default: one per physical core), then
    matches them (``workers`` processes, ``timeout`` seconds per pair). ``sampler_fn`` replaces
    :func:`kldm_cli.sampling.pipeline.sample_csp` (tests inject a fake one). Returns the record
    described in the module docstring and writes it to ``out`` if given; with ``out``, the sampled
    batches are kept in a :mod:`kldm_cli.candidate_log` until then, and a rerun after an
    interruption samples only the batches that were not finished.
    """
    from kldm_cli.metrics.csp import CSP_MATCHER_SETTINGS, match_structures
    from kldm_cli.sampling.loop import parse_time_grid, set_threads
    from kldm_cli.sampling.pipeline import DEFAULT_BATCH_ATOMS

    if k < 1:
        raise ValueError(f"k (candidates per target) must be >= 1, got {k}")
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _check_chunk(start, limit)
    if grid is not None:
        parse_time_grid(grid)
    real_sampler = sampler_fn is None
    if real_sampler or threads is not None:  # a fake sampler leaves torch's threads alone
        threads = set_threads(threads)
    batch_atoms = batch_atoms or DEFAULT_BATCH_ATOMS
    report = progress or (lambda message: None)
    started = time.perf_counter()
    if search is not None and chgnet is None:
        from kldm_cli.relax import load_chgnet

        chgnet = load_chgnet(device)  # without the [relax] extra: refused before sampling

    report(f"reading {data}")
    dataset = _load(data, niggli=True, use_cache=True)
    records = _chunk(dataset.records, start, limit, data, "test structure")
    targets = [record.to_structure() for record in records]
    compositions = [[int(z) for z in record.atomic_numbers] for record in records]
    read_s = time.perf_counter() - started

    weights_info = _weights_info(weights, resolve=real_sampler)
    log = None
    if out is not None:
        log = CandidateLog.open(out, {
            "data_sha256": dataset.content_hash, "start": start, "limit": limit, "k": k,
            "sampler": sampler, "steps": steps, "seed": seed, "device": device, "grid": grid,
            "batch_atoms": batch_atoms, "weights_sha256": weights_info["sha256"],
        })  # fmt: skip
        if log.done:
            report(f"resuming: {len(log.done)} candidates already sampled in {log.path}")

    if sampler_fn is None:
        from kldm_cli.sampling.pipeline import sample_csp as sampler_fn
    report(f"sampling {k} candidate(s) for each of {len(targets)} compositions")
    sampling_started = time.perf_counter()
    candidates = sampler_fn(
        weights, compositions, k, sampler=sampler, steps=steps, seed=seed, device=device,
        grid=grid, batch_atoms=batch_atoms, done=log.done if log else None,
        on_batch=_batch_reporter(len(compositions) * k, sampling_started, report, log),
    )  # fmt: skip
    sampling_s = time.perf_counter() - sampling_started + (log.previous_sampling_s if log else 0)
    if len(candidates) != len(targets) or any(len(c) != k for c in candidates):
        raise ValueError(
            f"the sampler returned {[len(c) for c in candidates][:5]}... candidate lists for "
            f"{len(targets)} compositions; expected {len(targets)} lists of {k}"
        )

    report(f"matching {sum(len(c) for c in candidates)} candidates against their targets")
    matching_started = time.perf_counter()
    result = match_structures(candidates, targets, workers=workers, timeout=timeout)
    matching_s = time.perf_counter() - matching_started

    per_target = []
    for record, target in zip(records, result.per_target, strict=True):
        entry = asdict(target)
        entry["index"] += start  # the row among the file's usable structures
        entry["material_id"] = record.material_id
        entry["formula"] = record.formula
        per_target.append(entry)
    record_out: dict[str, Any] = {
        "task": "csp",
        "created": _now(),
        "metrics": {"k": k, **result.summary()},
        "settings": {
            "k": k,
            "start": start,
            "limit": limit,
            "sampler": sampler,
            "steps": steps,
            "seed": seed,
            "device": device,
            "grid": grid,
            "threads": threads,
            "batch_atoms": batch_atoms,
            "workers": workers,
            "timeout_s": timeout,
            "matcher": dict(CSP_MATCHER_SETTINGS),
            "validity": "structural (min distance 0.5 Å, volume 0.1 Å³)",
            "rmse": "StructureMatcher.get_rms_dist, normalized by (V/N)^(1/3), "
            "best matching candidate, averaged over matched targets",
        },
        "inputs": {
            "data": _dataset_info(data, dataset, len(records)),
            "weights": weights_info,
            "resumed_candidates": len(log.done) if log else 0,
        },
        "versions": library_versions(),
        "timing_s": {
            "reading": read_s,
            "sampling": sampling_s,
            "matching": matching_s,
            "total": time.perf_counter() - started,
        },
        "per_target": per_target,
    }
    if search is not None:
        from kldm_cli.ranked import add_ranked_section

        add_ranked_section(
            record_out, candidates, targets, search, chgnet=chgnet, out=out, device=device,
            workers=workers, timeout=timeout, report=report,
        )  # fmt: skip
    if out is not None:
        write_record(record_out, out)
    if log is not None:
        log.remove()
    if search is not None and out is not None:
        from kldm_cli.ranked import search_log_path

        search_log_path(out).unlink(missing_ok=True)
    return _json_safe(record_out)


def _batch_reporter(
    total: int, started: float, report: Progress, log: CandidateLog | None = None
) -> Callable[..., None]:
    """An ``on_batch`` callback that keeps the batch in ``log`` and reports candidates done,
    elapsed time and the estimate left (from the batches sampled by this run)."""
    resumed = len(log.done) if log else 0
    sampled = 0
    last = started

    def on_batch(indices: Sequence[int], structures: Sequence[Any]) -> None:
        nonlocal sampled, last
        now = time.perf_counter()
        if log is not None:
            log.append(indices, structures, seconds=now - last)
        last = now
        sampled += len(indices)
        elapsed = now - started
        left = elapsed / sampled * (total - resumed - sampled)
        report(
            f"sampled {resumed + sampled}/{total} candidates in {elapsed:.0f} s "
            f"(about {left:.0f} s left)"
        )

    return on_batch


# ---------------------------------------------------------------------- DNG
def evaluate_dng(
    samples: str | Path,
    reference: str | Path,
    *,
    test: str | Path | None = None,
    limit: int | None = None,
    start: int = 0,
    stability: bool = True,
    hull_reference: Sequence[str | Path] | None = None,
    reference_entries: str | Path | None = None,
    relax_steps: int = 500,
    reference_relax_steps: int = 0,
    elemental_crystals: bool = True,
    fmax: float = 0.1,
    device: str = "cpu",
    threads: int | None = None,
    dataset_name: str = "mp_20",
    workers: int = 2,
    timeout: float | None = 120.0,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """De novo generation metrics of the structures in ``samples`` (CIF folder, extXYZ or CSV).

    ``reference`` is the training set (novelty; composition-fingerprint scaler; the convex hull
    unless ``hull_reference`` lists other files). ``test`` is the held-out set for coverage and
    the Wasserstein distances (CDVAE compares with the test set; default: ``reference``).
    ``dataset_name`` picks the coverage cutoffs. ``start`` and ``limit`` pick a chunk of the
    samples (``limit`` samples from index ``start``; records of chunks are merged with
    :func:`kldm_cli.combine.combine_dng_records`). With ``stability``, samples are relaxed with
    CHGNet (``relax_steps``, ``fmax``) and placed on a CHGNet hull of the reference structures
    (single-point, or ``reference_relax_steps`` of relaxation), with ASE's crystal of each
    sample element added as an elemental reference when ``elemental_crystals`` is set: the
    *proxy hull*, named so in the record. With ``reference_entries`` (a JSON of
    ``ComputedStructureEntry`` objects or a CSV with energies, see
    :mod:`kldm_cli.metrics.reference_entries`) the hull is built from those entries instead
    (MP2020-corrected, samples too) and S.U.N. novelty is checked against their structures.
    S.U.N. novelty (``novel_vs_known``) uses the disorder-aware matcher on the relaxed samples,
    against the reference entries or else every structure of ``reference`` and
    ``hull_reference``. CHGNet runs on ``threads`` CPU threads (default: one per physical core).
    """
    from kldm_cli.metrics import dng
    from kldm_cli.metrics.validity import compositional_validity, structural_validity
    from kldm_cli.threads import set_threads

    if dataset_name not in dng.COVERAGE_CUTOFFS:
        raise ValueError(
            f"Unknown dataset {dataset_name!r} for coverage cutoffs; choose one of "
            f"{', '.join(dng.COVERAGE_CUTOFFS)}"
        )
    _check_chunk(start, limit)
    if stability:
        from kldm_cli.relax import chgnet_device

        chgnet_device(device)  # a bad --device fails before minutes of coverage work
    if reference_entries is not None and not stability:
        raise ValueError("reference entries are for stability and S.U.N.; drop --no-stability")
    entries = None
    if reference_entries is not None:  # a bad file fails before minutes of coverage work
        from kldm_cli.metrics.reference_entries import load_reference_entries

        (progress or (lambda message: None))(f"reading reference entries {reference_entries}")
        entries = load_reference_entries(reference_entries)
    if stability or threads is not None:
        threads = set_threads(threads)
    report = progress or (lambda message: None)
    timing: dict[str, float] = {}
    started = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name] = now - clock
        clock = now

    report(f"reading {samples}")
    sample_set = _load(samples, niggli=False, use_cache=False)
    sample_records = _chunk(sample_set.records, start, limit, samples, "sample")
    structures = [r.to_structure() for r in sample_records]
    report(f"reading {reference}")
    reference_set = _load(reference, niggli=True, use_cache=True)
    reference_structures = [r.to_structure() for r in reference_set.records]
    if test is not None:
        report(f"reading {test}")
        test_set = _load(test, niggli=True, use_cache=True)
        test_structures = [r.to_structure() for r in test_set.records]
    else:
        test_set, test_structures = reference_set, reference_structures
    lap("reading")

    report("validity")
    struct_valid = [structural_validity(s) for s in structures]
    comp_valid = [compositional_validity(s) for s in structures]
    valid = [a and b for a, b in zip(struct_valid, comp_valid, strict=True)]
    lap("validity")

    report("uniqueness and novelty")
    unique = dng.uniqueness(structures, workers=workers, timeout=timeout)
    novel = dng.novelty(structures, reference_structures, workers=workers, timeout=timeout)
    lap("uniqueness_novelty")

    report(f"coverage against {len(test_structures)} structures (CrystalNN fingerprints)")
    struct_cutoff, comp_cutoff = dng.COVERAGE_CUTOFFS[dataset_name]
    scaler = dng.CompositionScaler.fit(dng.composition_fingerprints(reference_structures))
    cov = dng.coverage(
        structures, test_structures, struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff,
        comp_scaler=scaler, workers=workers, timeout=timeout,
    )  # fmt: skip
    lap("coverage")

    valid_structures = [s for s, ok in zip(structures, valid, strict=True) if ok]
    wdist_density = wdist_elements = None
    if valid_structures:
        wdist_density = dng.wasserstein_density(valid_structures, test_structures)
        wdist_elements = dng.wasserstein_num_elements(valid_structures, test_structures)
    lap("distributions")

    n = len(structures)
    metrics: dict[str, Any] = {
        "num_samples": n,
        "num_unreadable": len(sample_set.skipped),
        "structural_validity": sum(struct_valid) / n,
        "compositional_validity": sum(comp_valid) / n,
        "validity": sum(valid) / n,
        "uniqueness": unique.rate,
        "novelty": novel.rate,
        "unique_and_novel": sum(
            u and v for u, v in zip(unique.is_unique, novel.is_novel, strict=True)
        )
        / n,
        "num_uniqueness_timeouts": unique.num_timeouts,
        "num_novelty_timeouts": novel.num_timeouts,
        **{k: v for k, v in asdict(cov).items() if k not in ("struct_cutoff", "comp_cutoff")},
        "wdist_density": wdist_density,
        "wdist_num_elements": wdist_elements,
    }
    per_sample = [
        {
            "index": start + i,
            "material_id": record.material_id,
            "formula": structure.composition.reduced_formula,
            "structurally_valid": struct_valid[i],
            "compositionally_valid": comp_valid[i],
            "unique": unique.is_unique[i],
            "novel": novel.is_novel[i],
        }
        for i, (record, structure) in enumerate(zip(sample_records, structures, strict=True))
    ]

    hull_info: dict[str, Any] | None = None
    inputs_reference = _dataset_info(reference, reference_set, len(reference_structures))
    if stability:
        hull_info = _stability(
            structures, struct_valid, unique.is_unique, per_sample, metrics,
            reference_structures if hull_reference is None else None, hull_reference,
            reference_structures, inputs_reference, entries, workers=workers, timeout=timeout,
            relax_steps=relax_steps, reference_relax_steps=reference_relax_steps,
            elemental_crystals=elemental_crystals, fmax=fmax, device=device, report=report,
        )  # fmt: skip
        lap("stability")

    inputs: dict[str, Any] = {
        "samples": _dataset_info(samples, sample_set, n),
        "reference": inputs_reference,
        "test": _dataset_info(test or reference, test_set, len(test_structures)),
    }
    if hull_info is not None:
        inputs["hull_reference"] = hull_info
    record_out: dict[str, Any] = {
        "task": "dng",
        "created": _now(),
        "metrics": metrics,
        "settings": {
            "limit": limit,
            "start": start,
            "dataset_name": dataset_name,
            "coverage_cutoffs": {"struct": struct_cutoff, "comp": comp_cutoff},
            "composition_scaler": "fit on the reference set's Magpie fingerprints",
            "coverage_valid_only": True,
            "wasserstein_samples": "valid samples (structural and compositional)",
            "uniqueness_novelty_matcher": dict(dng.DNG_MATCHER_SETTINGS),
            "workers": workers,
            "timeout_s": timeout,
            "stability": stability,
            "stability_definition": "E_hull <= 0.1 eV/atom" if stability else None,
            "relax_steps": relax_steps if stability else None,
            "reference_relax_steps": reference_relax_steps if stability else None,
            "elemental_crystals": elemental_crystals if stability else None,
            "fmax": fmax if stability else None,
            "device": device,
            "threads": threads,
            "samples_metadata": _common_metadata(sample_records),
        },
        "inputs": inputs,
        "versions": library_versions(),
        "timing_s": {**timing, "total": time.perf_counter() - started},
        "per_sample": per_sample,
    }
    if out is not None:
        write_record(record_out, out)
    return _json_safe(record_out)


def _stability(
    structures: list[Structure],
    struct_valid: list[bool],
    is_unique: list[bool],
    per_sample: list[dict[str, Any]],
    metrics: dict[str, Any],
    hull_structures: list[Structure] | None,
    hull_paths: Sequence[str | Path] | None,
    reference_structures: list[Structure],
    reference_info: dict[str, Any],
    entries: Any,
    *,
    workers: int,
    timeout: float | None,
    relax_steps: int,
    reference_relax_steps: int,
    elemental_crystals: bool,
    fmax: float,
    device: str,
    report: Progress,
) -> dict[str, Any]:
    """Relax the structurally valid samples, place them on the hull (``entries``, else the
    proxy hull of the hull files), fill in E_hull / stable / S.U.N. (in ``per_sample`` and
    ``metrics``). Returns what the hull was built from."""
    from kldm_cli.metrics import dng
    from kldm_cli.metrics.stability import (
        STABILITY_THRESHOLD,
        build_hull_reference,
        energies_above_hull,
        proxy_hull_name,
        stability_metrics,
    )
    from kldm_cli.relax import load_chgnet, relax_structures

    model = load_chgnet(device)
    hull_info: dict[str, Any] = {"files": []}
    known = list(reference_structures)  # S.U.N. novelty: every structure given
    known_hashes = {reference_info["sha256"]}
    if entries is not None:
        hull_info.update(kind="reference entries", files=[entries.info()])
        hull_info["name"] = (
            f"reference entries: {len(entries.entries):,} of {Path(entries.path).name}"
        )
        known = entries.structures
    elif hull_structures is None:
        hull_structures = []
        for path in hull_paths or []:
            dataset = _load(path, niggli=True, use_cache=True)
            file_structures = [r.to_structure() for r in dataset.records]
            hull_structures.extend(file_structures)
            hull_info["files"].append(_dataset_info(path, dataset, len(dataset.records)))
            if dataset.content_hash not in known_hashes:
                known_hashes.add(dataset.content_hash)
                known.extend(file_structures)
    else:
        hull_info["files"].append("reference")
    if entries is None:
        hull_info.update(kind="proxy", name=proxy_hull_name(len(hull_structures)))

    to_relax = [i for i, ok in enumerate(struct_valid) if ok]
    report(f"relaxing {len(to_relax)} structurally valid samples with CHGNet")
    relaxed = relax_structures(
        [structures[i] for i in to_relax], steps=relax_steps, fmax=fmax, device=device, model=model
    )
    energies: list[float | None] = [None] * len(structures)
    relaxed_structures: list[Structure] = list(structures)
    for i, result in zip(to_relax, relaxed, strict=True):
        energies[i] = result.energy_per_atom
        if result.structure is not None:
            relaxed_structures[i] = result.structure

    if entries is not None:
        from kldm_cli.metrics.reference_entries import (
            EntriesHull,
            energies_above_entries_hull,
        )

        report(f"placing the samples on the hull of {len(entries.entries)} reference entries")
        e_hull = energies_above_entries_hull(relaxed_structures, energies, entries)
        hull_info.update(
            energy_kind="reference entries (MP2020 scale); samples: CHGNet + MP2020",
            elements_with_reference=sorted(EntriesHull(entries.entries).elements),
        )
    else:
        report("CHGNet energies of the reference structures for the proxy hull")
        hull = build_hull_reference(
            [structures[i] for i in to_relax], hull_structures,
            reference_relax_steps=reference_relax_steps,
            add_elemental_crystals=elemental_crystals, fmax=fmax, device=device, model=model,
        )  # fmt: skip
        e_hull = energies_above_hull(relaxed_structures, energies, hull)
        hull_info.update(
            num_structures_evaluated=len(hull.structures),
            num_failed=hull.num_failed,
            energy_kind=hull.energy_kind,
            elements_with_reference=sorted(hull.elements_with_reference()),
            elemental_crystals=hull.elemental_crystals,
        )
    report(f"novelty of the relaxed samples against {len(known)} known structures")
    novel_known = dng.novelty(
        relaxed_structures, known, workers=workers, timeout=timeout, disorder_aware=True
    )
    result = stability_metrics(
        e_hull, is_unique, novel_known.is_novel, threshold=STABILITY_THRESHOLD
    )
    for i, entry in enumerate(per_sample):
        entry["energy_per_atom"] = energies[i]
        entry["e_above_hull"] = e_hull[i]
        entry["novel_vs_known"] = novel_known.is_novel[i]
        entry["stable"] = result.is_stable[i]
        entry["sun"] = result.is_sun[i]
    metrics.update(
        hull=hull_info["name"],
        stable_rate=result.stable_rate,
        sun_rate=result.sun_rate,
        novelty_vs_known=novel_known.rate,
        num_hull_unknown=result.num_unknown,
        below_hull_rate=result.below_hull_rate,
        far_below_hull_rate=result.far_below_hull_rate,
        no_hull_rate=result.no_hull_rate,
        num_relax_failed=sum(r.energy_per_atom is None for r in relaxed),
        mean_e_above_hull=result.mean_e_above_hull,
        stability_threshold=result.threshold,
    )
    hull_info["novelty"] = {
        "num_known_structures": len(known),
        "structures": "relaxed samples (as generated where not relaxed)",
        "matcher": "disorder-aware (kldm_cli.metrics.dng.matches_any_disorder_aware), "
        f"{dng.DNG_MATCHER_SETTINGS}",
    }
    return hull_info


def _common_metadata(records: Sequence[Any]) -> dict[str, Any]:
    """Metadata values shared by every sample (e.g. the model, sampler and seed that made them)."""
    if not records:
        return {}
    common = {k: v for k, v in records[0].metadata.items() if k not in ("file", "sample_index")}
    for record in records[1:]:
        common = {k: v for k, v in common.items() if record.metadata.get(k) == v}
    return common

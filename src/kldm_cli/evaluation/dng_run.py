"""``kldm evaluate dng``: de novo generation metrics of a set of structures, with a full record.

:func:`evaluate_dng` scores generated structures: validity, uniqueness, novelty, coverage,
Wasserstein distances and, with CHGNet, stability and S.U.N. It returns a JSON-ready dict and,
given ``out``, writes it with every number, the exact settings, the sha256 of the data files,
library versions and the time spent in each stage (:mod:`~kldm_cli.evaluation.records`). See
``docs/evaluation.md`` for the definitions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from kldm_cli.evaluation.records import (
    Progress,
    check_chunk,
    common_metadata,
    dataset_info,
    finish_record,
    library_versions,
    read_chunk,
    read_dataset,
    utc_now,
)


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
    :func:`kldm_cli.evaluation.combine.combine_dng_records`). With ``stability``, samples are
    relaxed with CHGNet (``relax_steps``, ``fmax``) and placed on a CHGNet hull of the reference
    structures (single-point, or ``reference_relax_steps`` of relaxation), with ASE's crystal of
    each sample element added as an elemental reference when ``elemental_crystals`` is set: the
    *proxy hull*, named so in the record. With ``reference_entries`` (a JSON of
    ``ComputedStructureEntry`` objects or a CSV with energies, see
    :mod:`kldm_cli.evaluation.metrics.reference_entries`) the hull is built from those entries
    instead (MP2020-corrected, samples too) and S.U.N. novelty is checked against their structures.
    S.U.N. novelty (``novel_vs_known``) uses the disorder-aware matcher on the relaxed samples,
    against the reference entries or else every structure of ``reference`` and
    ``hull_reference``. CHGNet runs on ``threads`` CPU threads (default: one per physical core).
    """
    from kldm_cli.evaluation.metrics import dng
    from kldm_cli.evaluation.metrics.validity import compositional_validity, structural_validity
    from kldm_cli.threads import set_threads

    if dataset_name not in dng.COVERAGE_CUTOFFS:
        raise ValueError(
            f"Unknown dataset {dataset_name!r} for coverage cutoffs; choose one of "
            f"{', '.join(dng.COVERAGE_CUTOFFS)}"
        )
    check_chunk(start, limit)
    if stability:
        from kldm_cli.evaluation.relax import chgnet_device

        chgnet_device(device)  # a bad --device fails before minutes of coverage work
    if reference_entries is not None and not stability:
        raise ValueError("reference entries are for stability and S.U.N.; drop --no-stability")
    entries = None
    if reference_entries is not None:  # a bad file fails before minutes of coverage work
        from kldm_cli.evaluation.metrics.reference_entries import load_reference_entries

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
    sample_set, sample_records = read_chunk(
        samples, start, limit, "sample", niggli=False, use_cache=False
    )
    structures = [r.to_structure() for r in sample_records]
    report(f"reading {reference}")
    reference_set = read_dataset(reference, niggli=True, use_cache=True)
    reference_structures = [r.to_structure() for r in reference_set.records]
    if test is not None:
        report(f"reading {test}")
        test_set = read_dataset(test, niggli=True, use_cache=True)
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
    inputs_reference = dataset_info(reference, reference_set, len(reference_structures))
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
        "samples": dataset_info(samples, sample_set, n),
        "reference": inputs_reference,
        "test": dataset_info(test or reference, test_set, len(test_structures)),
    }
    if hull_info is not None:
        inputs["hull_reference"] = hull_info
    record_out: dict[str, Any] = {
        "task": "dng",
        "created": utc_now(),
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
            "samples_metadata": common_metadata(sample_records),
        },
        "inputs": inputs,
        "versions": library_versions(),
        "timing_s": {**timing, "total": time.perf_counter() - started},
        "per_sample": per_sample,
    }
    return finish_record(record_out, out)


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
    from kldm_cli.evaluation.metrics import dng
    from kldm_cli.evaluation.metrics.stability import (
        STABILITY_THRESHOLD,
        build_hull_reference,
        energies_above_hull,
        proxy_hull_name,
        stability_metrics,
    )
    from kldm_cli.evaluation.relax import load_chgnet, relax_structures

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
            dataset = read_dataset(path, niggli=True, use_cache=True)
            file_structures = [r.to_structure() for r in dataset.records]
            hull_structures.extend(file_structures)
            hull_info["files"].append(dataset_info(path, dataset, len(dataset.records)))
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
        from kldm_cli.evaluation.metrics.reference_entries import (
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
        "matcher": "disorder-aware (kldm_cli.evaluation.metrics.dng.matches_any_disorder_aware), "
        f"{dng.DNG_MATCHER_SETTINGS}",
    }
    return hull_info

"""``kldm evaluate csp``: MR@k and RMSE of a CSP model, with a full record.

:func:`evaluate_csp` samples ``k`` candidates per test composition, matches them against the test
structures (:func:`~kldm_cli.evaluation.metrics.csp.match_structures`) and returns MR@k and RMSE:
a JSON-ready dict that, given ``out``, is written with every number, the exact settings, the
sha256 of the weights and data files, library versions and the time spent in each stage
(:mod:`~kldm_cli.evaluation.records`). See ``docs/evaluation.md`` for the definitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from kldm_cli.evaluation.candidate_log import CandidateLog
from kldm_cli.evaluation.records import (
    Progress,
    check_chunk,
    dataset_info,
    finish_record,
    library_versions,
    read_chunk,
    utc_now,
    weights_info,
)

#: ``sampler_fn(weights, compositions, num_samples, *, sampler, steps, seed, device, grid,
#: batch_atoms, on_batch, done)`` → one list of ``num_samples`` candidate structures per
#: composition (``kldm_cli.sampling.pipeline.sample_csp``).
CSPSampler = Callable[..., list[list[Structure]]]

SAMPLERS = ("pc", "em")


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

    With ``search`` (a :class:`kldm_cli.evaluation.search.SearchSettings`) the ``k`` candidates of
    each composition are also relaxed and ranked, and the record gets a ``ranked`` section: raw MR@1
    and MR@k next to ranked top-1/3/5 (:mod:`kldm_cli.evaluation.ranked`). ``chgnet`` reuses a
    loaded CHGNet (tests pass a fake one).

    Samples ``k`` candidates for the composition of each of ``limit`` test structures from index
    ``start`` (all if None; records of chunks are merged with
    :func:`kldm_cli.evaluation.combine.combine_csp_records`) with ``sampler`` ("pc" or "em") in
    ``steps`` steps from ``seed`` on the time ``grid`` (default: the model's), in batches of
    ``batch_atoms`` atoms on ``threads`` CPU threads (default: one per physical core), then
    matches them (``workers`` processes, ``timeout`` seconds per pair). ``sampler_fn`` replaces
    :func:`kldm_cli.sampling.pipeline.sample_csp` (tests inject a fake one). Returns the record
    described in the module docstring and writes it to ``out`` if given; with ``out``, the sampled
    batches are kept in a :mod:`kldm_cli.evaluation.candidate_log` until then, and a rerun after an
    interruption samples only the batches that were not finished.
    """
    from kldm_cli.evaluation.metrics.csp import CSP_MATCHER_SETTINGS, match_structures
    from kldm_cli.sampling.loop import parse_time_grid, set_threads
    from kldm_cli.sampling.pipeline import DEFAULT_BATCH_ATOMS

    if k < 1:
        raise ValueError(f"k (candidates per target) must be >= 1, got {k}")
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_chunk(start, limit)
    if grid is not None:
        parse_time_grid(grid)
    real_sampler = sampler_fn is None
    if real_sampler or threads is not None:  # a fake sampler leaves torch's threads alone
        threads = set_threads(threads)
    batch_atoms = batch_atoms or DEFAULT_BATCH_ATOMS
    report = progress or (lambda message: None)
    started = time.perf_counter()
    if search is not None and chgnet is None:
        from kldm_cli.evaluation.relax import load_chgnet

        chgnet = load_chgnet(device)  # without the [relax] extra: refused before sampling

    report(f"reading {data}")
    dataset, records = read_chunk(data, start, limit, "test structure", niggli=True, use_cache=True)
    targets = [record.to_structure() for record in records]
    compositions = [[int(z) for z in record.atomic_numbers] for record in records]
    read_s = time.perf_counter() - started

    weights_entry = weights_info(weights, resolve=real_sampler)
    log = None
    if out is not None:
        log = CandidateLog.open(out, {
            "data_sha256": dataset.content_hash, "start": start, "limit": limit, "k": k,
            "sampler": sampler, "steps": steps, "seed": seed, "device": device, "grid": grid,
            "batch_atoms": batch_atoms, "weights_sha256": weights_entry["sha256"],
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
        "created": utc_now(),
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
            "data": dataset_info(data, dataset, len(records)),
            "weights": weights_entry,
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
        from kldm_cli.evaluation.ranked import add_ranked_section

        add_ranked_section(
            record_out, candidates, targets, search, chgnet=chgnet, out=out, device=device,
            workers=workers, timeout=timeout, report=report,
        )  # fmt: skip
    finished = finish_record(record_out, out)
    if log is not None:
        log.remove()
    if search is not None and out is not None:
        from kldm_cli.evaluation.ranked import search_log_path

        search_log_path(out).unlink(missing_ok=True)
    return finished


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

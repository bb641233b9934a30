"""The ranked search inside ``kldm evaluate csp --rank``: top-1/3/5 of the ranked candidates.

For every test composition the ``k`` sampled candidates go through
:func:`kldm_cli.evaluation.search.search_structures`; the ranked (relaxed) structures and the raw
(unrelaxed) candidates are then matched against the test structure with the CSP benchmark's
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``. Per target the record keeps:

- ``raw_first``: RMSE of the first raw candidate if it matches (MR@1 of the sampler alone);
- ``raw_best``: smallest RMSE over all ``k`` raw candidates (MR@k);
- ``ranked_match_rank``: the first rank (1-based) of the ranked list that matches, and
  ``ranked_rmse`` per rank, so top-n is ``ranked_match_rank <= n``;
- ``raw_rmse`` per raw candidate and ``candidates``: what the search did with each (status,
  single-point energy, rank), so that other screen sizes can be judged from the record.

The search of each finished composition is appended to ``RECORD.json.search.jsonl`` (flushed), so
an interrupted evaluation goes on where it stopped; the file is deleted with the record written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from kldm_cli.evaluation.candidate_log import append_line, read_log, setting_differences
from kldm_cli.evaluation.search import RELAXED_STATUSES, SearchSettings, search_structures

SUFFIX = ".search.jsonl"
#: Search settings added after the first records and logs were written, with the value that those
#: older files implied (they ranked by energy alone).
LATER_SETTINGS: dict[str, Any] = {"frequency_weight": 0.0}
#: Ranks reported as top-n.
TOP_N = (1, 3, 5)


def search_log_path(out: str | Path) -> Path:
    out = Path(out).expanduser()
    return out.with_name(out.name + SUFFIX)


def with_later_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Search ``settings`` with :data:`LATER_SETTINGS` filled in where an older file lacks them."""
    return {**LATER_SETTINGS, **settings}


def _read_log(path: Path, settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Finished compositions (target index → entry) of an earlier run with the same settings."""

    def check_header(header: dict[str, Any] | None) -> None:
        if header is None or "settings" not in header:
            raise ValueError(
                f"{path} is not a kldm ranked-search log; move it away or choose another --out"
            )
        differences = setting_differences(
            with_later_settings(header["settings"]), with_later_settings(settings)
        )
        if differences:
            raise ValueError(
                f"{path} holds a ranked search made with other settings "
                f"({'; '.join(differences)}); delete it or use another --out"
            )

    if not path.exists():
        return {}
    entries = read_log(path, check_header, {"target"}, "a ranked search")
    return {int(entry["target"]): entry for entry in entries}


def _search_entry(target: int, result: Any, keep: int) -> dict[str, Any]:
    """What the record and the resume log keep of one composition's search."""
    return {
        "target": target,
        "ranked": [
            {
                "sample_index": entry.sample_index,
                "energy_per_atom": entry.energy_per_atom,
                "relax_steps": entry.relax_steps,
                "converged": entry.converged,
                "spacegroup": entry.spacegroup,
                "samples": entry.samples,
                "cif": entry.structure.to(fmt="cif"),
            }
            for entry in result.ranking[:keep]
        ],
        "candidates": [
            {
                "sample_index": outcome.sample_index,
                "status": outcome.status,
                "duplicate_of": outcome.duplicate_of,
                "samples": outcome.samples,
                "single_point_energy_per_atom": outcome.single_point_energy_per_atom,
                "rank": outcome.rank,
            }
            for outcome in result.candidates
        ],
        "counts": result.counts(),
        "timing_s": result.timing_s,
    }


def run_searches(
    candidates: Sequence[Sequence[Structure | None]],
    settings: SearchSettings,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    model: Any = None,
    report: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """One :func:`~kldm_cli.evaluation.search.search_structures` per composition (resumable
    with ``out``)."""
    from kldm_cli.evaluation.relax import load_chgnet

    log_settings = {**asdict(settings), "num_targets": len(candidates)}
    path = search_log_path(out) if out is not None else None
    done = _read_log(path, log_settings) if path is not None else {}
    if path is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        append_line(path, {"settings": log_settings})
    if done:
        report(f"resuming: {len(done)} ranked searches already done in {path}")
    model = model or load_chgnet(device)
    entries = []
    started = time.perf_counter()
    searched = 0
    for target, proposals in enumerate(candidates):
        if target in done:
            entries.append(done[target])
            continue
        result = search_structures(list(proposals), settings, model=model, device=device)
        entry = _search_entry(target, result, max(TOP_N))
        if path is not None:
            append_line(path, entry)
        entries.append(entry)
        searched += 1
        elapsed = time.perf_counter() - started
        left = elapsed / searched * (len(candidates) - target - 1)
        report(
            f"ranked {target + 1}/{len(candidates)} compositions in {elapsed:.0f} s "
            f"(about {left:.0f} s left)"
        )
    return entries


def add_ranked_section(
    record: dict[str, Any],
    candidates: Sequence[Sequence[Structure]],
    targets: Sequence[Structure],
    search: SearchSettings,
    *,
    chgnet: Any,
    out: str | Path | None,
    device: str,
    workers: int,
    timeout: float | None,
    report: Callable[[str], None],
) -> None:
    """Run the ranked search on every composition's candidates and add the ``ranked`` section
    (and the per-target ``search`` entries) to a ``kldm evaluate csp`` record."""
    from kldm_cli.evaluation.search import DEDUPE_MATCHER_SETTINGS

    report(f"ranked search on {len(candidates)} compositions")
    search_started = time.perf_counter()
    entries = run_searches(candidates, search, out=out, device=device, model=chgnet, report=report)
    search_s = time.perf_counter() - search_started
    report("matching raw and ranked structures against their targets")
    matching_started = time.perf_counter()
    metrics, per_target = score_searches(
        candidates, targets, entries, workers=workers, timeout=timeout
    )
    for entry, ranked in zip(record["per_target"], per_target, strict=True):
        entry["search"] = ranked
    num = max(1, len(candidates))
    metrics["sampling_seconds_per_composition"] = record["timing_s"]["sampling"] / num
    record["ranked"] = {
        "metrics": metrics,
        "settings": {**asdict(search), "dedupe_matcher": dict(DEDUPE_MATCHER_SETTINGS)},
        "timing_s": {"search": search_s, "matching": time.perf_counter() - matching_started},
    }
    record["timing_s"]["total"] += search_s


def ranked_structures(entry: dict[str, Any]) -> list[Structure]:
    return [Structure.from_str(item["cif"], fmt="cif") for item in entry["ranked"]]


def score_searches(
    candidates: Sequence[Sequence[Structure | None]],
    targets: Sequence[Structure],
    entries: Sequence[dict[str, Any]],
    *,
    workers: int = 2,
    timeout: float | None = 30.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Match raw and ranked structures against the targets: (metrics, per-target entries)."""
    from kldm_cli.evaluation.metrics._parallel import run_tasks
    from kldm_cli.evaluation.metrics.csp import CSP_MATCHER_SETTINGS, rms_distance
    from kldm_cli.evaluation.metrics.validity import structural_validity

    pairs: list[tuple[int, str, int, Structure]] = []
    for i, (proposals, entry) in enumerate(zip(candidates, entries, strict=True)):
        pairs += [(i, "raw", j, c) for j, c in enumerate(proposals) if c is not None]
        pairs += [(i, "ranked", r, s) for r, s in enumerate(ranked_structures(entry))]
    pairs = [p for p in pairs if structural_validity(p[3])]
    outcomes = run_tasks(
        rms_distance,
        [(structure, targets[i], dict(CSP_MATCHER_SETTINGS)) for i, _, _, structure in pairs],
        workers=workers,
        timeout=timeout,
    )
    rms: dict[tuple[int, str, int], float | None] = {}
    for (i, kind, j, _), outcome in zip(pairs, outcomes, strict=True):
        rms[(i, kind, j)] = outcome.value if outcome.status == "ok" else None
    per_target = []
    for i, entry in enumerate(entries):
        raw = [rms.get((i, "raw", j)) for j in range(len(candidates[i]))]
        ranked = [rms.get((i, "ranked", r)) for r in range(len(entry["ranked"]))]
        first = next((r + 1 for r, value in enumerate(ranked) if value is not None), None)
        matched_raw = [value for value in raw if value is not None]
        per_target.append(
            {
                "raw_first_rmse": raw[0] if raw else None,
                "raw_best_rmse": min(matched_raw) if matched_raw else None,
                "ranked_match_rank": first,
                "ranked_rmse": ranked,
                "raw_rmse": raw,
                "candidates": entry.get("candidates", []),
                **{key: entry[key] for key in ("counts", "timing_s")},
                "ranked": [_without_cif(item) for item in entry["ranked"]],
            }
        )
    return ranked_metrics(per_target), per_target


def _without_cif(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "cif"}


def _rate_and_rmse(values: Sequence[float | None]) -> dict[str, Any]:
    matched = [v for v in values if v is not None]
    return {
        "match_rate": len(matched) / len(values) if values else 0.0,
        "num_matched": len(matched),
        "rmse": sum(matched) / len(matched) if matched else None,
    }


def ranked_metrics(per_target: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Raw MR@1 / MR@k and ranked top-n (match rate, matched count, RMSE) over targets."""
    metrics: dict[str, Any] = {
        "num_targets": len(per_target),
        "raw_mr_at_1": _rate_and_rmse([t["raw_first_rmse"] for t in per_target]),
        "raw_mr_at_k": _rate_and_rmse([t["raw_best_rmse"] for t in per_target]),
    }
    for n in TOP_N:
        values = []
        for t in per_target:
            rank = t["ranked_match_rank"]
            hits = [v for v in t["ranked_rmse"][:n] if v is not None]
            values.append(min(hits) if rank is not None and rank <= n and hits else None)
        metrics[f"ranked_top_{n}"] = _rate_and_rmse(values)
    stages: dict[str, float] = {}
    for t in per_target:
        for name, seconds in t["timing_s"].items():
            stages[name] = stages.get(name, 0.0) + seconds
    metrics["search_seconds_per_composition"] = (
        {name: total / len(per_target) for name, total in stages.items()} if per_target else {}
    )
    metrics["right_structure_stages"] = right_structure_stages(per_target)
    return metrics


def right_structure_stages(per_target: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How far the right structure got: sampled, kept by the screen, ranked first.

    Counted over the targets whose record keeps every candidate's fate (``candidates`` and
    ``raw_rmse``). A raw candidate that matches the target counts as kept when it, or the
    candidate it duplicates, was relaxed. The gaps between the counts say where the search loses
    the right structure: in sampling, in the single-point screen, or in the energy ranking.
    """
    counts = {"num_targets": 0, "sampled": 0, "kept_by_screen": 0, "ranked_first": 0}
    for target in per_target:
        candidates, raw = target.get("candidates"), target.get("raw_rmse")
        if not candidates or raw is None:
            continue
        relaxed = {c["sample_index"] for c in candidates if c["status"] in RELAXED_STATUSES}
        matched = [c for c in candidates if raw[c["sample_index"]] is not None]
        counts["num_targets"] += 1
        counts["sampled"] += bool(matched)
        counts["kept_by_screen"] += any(
            c["sample_index"] in relaxed or c["duplicate_of"] in relaxed for c in matched
        )
        counts["ranked_first"] += target["ranked_match_rank"] == 1
    return counts

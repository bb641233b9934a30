"""Does the sampling frequency help the ranked search? Re-rank finished --rank records.

Reads ``kldm evaluate csp --rank`` records, which keep each composition's ranked list, the RMSE
of each ranked entry and what became of every candidate, and re-orders each ranked list by
:func:`kldm_cli.evaluation.search.ranking_score` (``E/atom - w ln n``, n = the candidates that were
the structure before relaxation) for every weight ``w``. Nothing is sampled or relaxed again: the
ranked set is the one the record's search relaxed, only its order changes. It prints top-1 and
top-3 per weight, and how many compositions each weight wins and loses at top-1 against ``w = 0``.

    python benchmarks/frequency_weight_study.py training/csp-mp20-medium/ranked/*.json.gz \\
        --rows 60-210 --weights 0,0.005,0.01,0.02,0.05
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kldm_cli.evaluation.combine import load_records
from kldm_cli.evaluation.search import ranking_score, sample_counts


def targets_with_fates(paths: Sequence[Path], first: int, end: int) -> list[dict[str, Any]]:
    """Per-target entries of rows ``[first, end)`` that keep every candidate's fate."""
    targets = []
    for record in load_records(paths):
        for target in record["per_target"]:
            search = target.get("search") or {}
            if first <= target["index"] < end and "candidates" in search and search["ranked"]:
                targets.append(target)
    return sorted(targets, key=lambda target: target["index"])


def reranked_matches(search: dict[str, Any], weight: float) -> list[bool]:
    """Whether each entry of the re-ordered ranked list matches the test structure."""
    fates = search["candidates"]
    valid = [fate["status"] != "invalid" for fate in fates]
    before_relaxation = [f["duplicate_of"] if f["status"] == "duplicate" else None for f in fates]
    samples = sample_counts(before_relaxation, valid)
    entries = [
        (ranking_score(entry["energy_per_atom"], samples[entry["sample_index"]], weight), position)
        for position, entry in enumerate(search["ranked"])
    ]
    return [search["ranked_rmse"][position] is not None for _, position in sorted(entries)]


def study(targets: Sequence[dict[str, Any]], weights: Sequence[float]) -> list[dict[str, Any]]:
    """Top-1/top-3 counts per weight and top-1 wins/losses against weight 0."""
    baseline = [reranked_matches(t["search"], 0.0)[0] for t in targets]
    rows = []
    for weight in weights:
        matches = [reranked_matches(t["search"], weight) for t in targets]
        first = [m[0] for m in matches]
        rows.append(
            {
                "weight": weight,
                "top_1": sum(first),
                "top_3": sum(any(m[:3]) for m in matches),
                "wins": sum(f and not b for f, b in zip(first, baseline, strict=True)),
                "losses": sum(b and not f for f, b in zip(first, baseline, strict=True)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, nargs="+")
    parser.add_argument("--rows", default="0-1000000", help="FIRST-END (end excluded)")
    parser.add_argument("--weights", default="0,0.005,0.01,0.02,0.03,0.05,0.1")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    args = parser.parse_args()
    first, end = (int(part) for part in args.rows.split("-"))
    targets = targets_with_fates(args.records, first, end)
    rows = study(targets, [float(w) for w in args.weights.split(",")])
    print(f"{len(targets)} compositions (rows {first}-{end - 1} that keep every candidate's fate)")
    print("weight eV/atom | top-1 | top-3 | top-1 won / lost against 0")
    for row in rows:
        print(
            f"{row['weight']:>14g} | {row['top_1']:>5} | {row['top_3']:>5} | "
            f"{row['wins']} / {row['losses']}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": [first, end], "n": len(targets), "study": rows}))


if __name__ == "__main__":
    main()

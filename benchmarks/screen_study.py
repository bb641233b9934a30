"""How large must the ranked search's CHGNet screen be? Recall of the single-point screen.

For test rows ``[start, start + rows)`` this samples ``k`` candidates per composition exactly as
``kldm evaluate csp -k K --sampler em --steps 100 --grid power:3`` does in chunks of ``chunk`` rows
(same batches, same seeds), removes invalid candidates and duplicates as
:func:`kldm_cli.evaluation.search.search_structures` does, computes CHGNet single-point energies of
the unique ones and matches each against the test structure. It prints, for every screen size K, the
share of compositions whose right structure survives a screen of K (the ceiling of ranked top-n
for that K), and writes the per-target details as JSON.

    python benchmarks/screen_study.py --rows 50 --out benchmarks/results/screen_study.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kldm_cli.data.readers import load_dataset
from kldm_cli.evaluation.metrics._parallel import run_tasks
from kldm_cli.evaluation.metrics.csp import CSP_MATCHER_SETTINGS, rms_distance
from kldm_cli.evaluation.metrics.validity import structural_validity
from kldm_cli.evaluation.relax import load_chgnet, predict_energies
from kldm_cli.evaluation.search import unique_candidates
from kldm_cli.sampling import sample_csp
from kldm_cli.threads import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mp_20/test.csv.gz")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=10, help="rows per evaluate chunk")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    set_threads(1)
    records = load_dataset(args.data, niggli=True).records[args.start : args.start + args.rows]
    chgnet = load_chgnet("cpu")
    started = time.perf_counter()
    targets = []
    for offset in range(0, len(records), args.chunk):
        chunk = records[offset : offset + args.chunk]
        compositions = [[int(z) for z in r.atomic_numbers] for r in chunk]
        candidates = sample_csp(
            args.weights, compositions, args.k, sampler="em", steps=100, grid="power:3"
        )
        for record, proposals in zip(chunk, candidates, strict=True):
            valid = [s if structural_validity(s) else None for s in proposals]
            duplicate_of = unique_candidates(valid)
            unique = [i for i, d in enumerate(duplicate_of) if d is None and valid[i] is not None]
            energies = predict_energies([proposals[i] for i in unique], model=chgnet)
            target = record.to_structure()
            outcomes = run_tasks(
                rms_distance,
                [(proposals[i], target, dict(CSP_MATCHER_SETTINGS)) for i in unique],
                workers=1,
                timeout=30.0,
            )
            matches = [o.status == "ok" and o.value is not None for o in outcomes]
            order = sorted(
                range(len(unique)), key=lambda p: (energies[p] is None, energies[p] or 0.0, p)
            )
            screen_rank = next((r + 1 for r, p in enumerate(order) if matches[p]), None)
            targets.append(
                {
                    "material_id": record.material_id,
                    "formula": record.formula,
                    "num_unique": len(unique),
                    "matched_unique": int(sum(matches)),
                    "screen_rank_of_first_match": screen_rank,
                }
            )
        print(f"{len(targets)} rows in {time.perf_counter() - started:.0f} s", flush=True)
    found = [t for t in targets if t["screen_rank_of_first_match"] is not None]
    print(f"rows {args.start}-{args.start + len(targets) - 1}: {len(found)} of {len(targets)} "
          "have a matching unique candidate")  # fmt: skip
    print("screen K | right structure kept")
    for k in (1, 2, 3, 5, 8, 10, 15, 20):
        kept = sum(1 for t in found if t["screen_rank_of_first_match"] <= k)
        print(f"{k:8d} | {kept}/{len(targets)} = {kept / len(targets):.0%}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                        "targets": targets}, indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()

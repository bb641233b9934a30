"""Quality against network evaluations: CSP match rate of sampler settings with fewer steps.

One command prints a table and writes JSON (``--out``, default ``benchmarks/results``)::

    python benchmarks/bench_steps.py --weights runs/csp-mp20 --num 100 --threads 1 \\
        --settings pc:1000,pc:50,pc:50:power:2,em:100,em:100:power:3

Each setting is ``METHOD:STEPS[:GRID][@TAU]`` (``GRID``: ``uniform``, default, or ``power[:RHO]``;
``TAU``: the PC corrector step size, default the model's).
Every setting samples one candidate for each of ``--num`` compositions of ``--data`` (from
index ``--start``) with the same seed and batches as ``kldm predict`` (so settings are compared on
the same compositions and the same prior draws), then matches them to the test structures with the
CSP StructureMatcher settings (stol=0.5, angle_tol=10, ltol=0.3). The first setting is the
reference; the table gives each setting's match rate, RMSE, network evaluations (NFE) per
structure, and the difference in match rate from the reference in percentage points.

With ``n`` compositions a match rate has a sampling error of about ``sqrt(p (1 - p) / n)``
(5 points at p = 0.5, n = 100): a difference of one point between settings is only meaningful
with many more compositions, or as a paired comparison (same compositions, same seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

DEFAULT_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_20" / "test.csv.gz"


def parse_setting(spec: str) -> tuple[str, int, str, float | None]:
    """``"pc:50:power:3@0.5"`` → ("pc", 50, "power:3", 0.5); ``"em:100"`` → ("em", 100,
    "uniform", None) (``@TAU``: the corrector step size, default the model's)."""
    from kldm_cli.sampling import parse_time_grid

    spec, _, tau = spec.partition("@")
    method, _, rest = spec.partition(":")
    steps, _, grid = rest.partition(":")
    if method not in ("pc", "em") or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"setting {spec!r}: expected METHOD:STEPS[:GRID][@TAU]")
    grid = grid or "uniform"
    parse_time_grid(grid)
    return method, int(steps), grid, float(tau) if tau else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--weights", required=True, help="CSP model folder.")
    add("--data", type=Path, default=DEFAULT_TEST, help="Test set (compositions and targets).")
    add("--num", type=int, default=100, help="Compositions (NUM of --data from --start).")
    add("--start", type=int, default=0, help="Index of the first composition used.")
    add("--settings", default="pc:1000,pc:50,pc:50:power:2,em:100,em:100:power:2")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=None, help="CPU threads (default: physical cores).")
    add("--workers", type=int, default=1, help="Structure-matching processes.")
    add("--out", type=Path, default=Path("benchmarks/results"))
    add("--tag", default=None, help="Name of the JSON file.")
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.settings.split(",")]

    from kldm_cli.data.readers import load_dataset
    from kldm_cli.evaluation.metrics.csp import match_structures
    from kldm_cli.sampling import load_model, sample_model, set_threads

    threads = set_threads(args.threads)
    model = load_model(args.weights, "csp").model
    records = load_dataset(args.data).records[args.start : args.start + args.num]
    compositions = [r.atomic_numbers.tolist() for r in records]
    targets = [r.to_structure() for r in records]
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "weights": args.weights, "data": str(args.data), "start": args.start,
        "num": len(records),
        "seed": args.seed, "threads": threads, "load_average_start": os.getloadavg(),
        "settings": [],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag or 'steps-' + Path(args.weights).name}.json"
    default_sampler = model.config.sampler
    for method, steps, grid, tau in settings:
        tau = default_sampler.corrector_tau if tau is None else tau
        sampler = replace(default_sampler, corrector_tau=tau)
        model.config = replace(model.config, sampler=sampler)
        wall, cpu = time.perf_counter(), time.process_time()
        candidates = sample_model(
            model, compositions, 1, method=method, steps=steps, seed=args.seed, grid=grid
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result = match_structures(candidates, targets, workers=args.workers)
        row = {
            "setting": f"{method}:{steps}:{grid}" + (f"@{tau}" if method == "pc" else ""),
            "method": method, "steps": steps, "grid": grid, "corrector_tau": tau,
            "nfe": steps * (2 if method == "pc" else 1),
            "match_rate": result.match_rate, "rmse": result.rmse,
            "num_matched": result.num_matched, "num_invalid": result.num_invalid,
            "sampling_seconds": wall, "sampling_cpu_seconds": cpu,
            "matched": [t.matched for t in result.per_target],
        }  # fmt: skip
        report["settings"].append(row)
        print(f"{row['setting']}: match {row['match_rate']:.3f} rmse {row['rmse']} "
              f"({wall:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
        path.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a kill
    report["load_average_end"] = os.getloadavg()
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {path}")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    reference = report["settings"][0]
    table = Table(title=f"CSP match rate vs steps ({report['num']} compositions, one sample each)")
    for column in ("setting", "NFE", "match rate", "Δ vs first (points)", "both matched",
                   "RMSE", "sampling s"):  # fmt: skip
        table.add_column(column)
    for row in report["settings"]:
        both = sum(a and b for a, b in zip(row["matched"], reference["matched"], strict=True))
        table.add_row(
            row["setting"], str(row["nfe"]), f"{row['match_rate']:.3f}",
            f"{100 * (row['match_rate'] - reference['match_rate']):+.1f}", str(both),
            "–" if row["rmse"] is None else f"{row['rmse']:.4f}",
            f"{row['sampling_seconds']:.0f}",
        )  # fmt: skip
    Console(width=160, emoji=False).print(table)


if __name__ == "__main__":
    main()

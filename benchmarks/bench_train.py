"""Training speed: optimizer steps per second of ``kldm train`` on this machine.

One command prints a line per preset and writes JSON (``--out``, default ``benchmarks/results``)::

    python benchmarks/bench_train.py --presets medium --batch-size 64 --steps 40 --threads 1
    python benchmarks/bench_train.py --presets medium --precision bf16 --threads 1  # AMX CPUs

For each preset it builds the trainer exactly as ``kldm train`` does (same data, batches in the
epoch-0 order of ``--seed``, a fresh network), runs ``--warmup`` steps untimed and then times
``--steps`` full optimizer steps (loss, backward, gradient clipping, Adam, EMA) one by one. It
reports steps/s over the timed steps, the median step time, and the atoms and edges per batch,
since the edge-sized matrix products dominate a step. Nothing is written to the run folder but
the config (a temporary folder). The load average before and after is recorded: another job on
the same cores slows every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import DEFAULT_TRAIN  # noqa: E402


def time_preset(args: argparse.Namespace, preset: str) -> dict:
    """Warm up, then time ``args.steps`` optimizer steps of a fresh ``preset`` trainer."""
    from kldm_cli.training import Trainer, TrainOptions
    from kldm_cli.training.dataset import epoch_order, iterate_batches

    with tempfile.TemporaryDirectory() as folder:
        options = TrainOptions(
            data=args.data, out=folder, task=args.task, preset=preset,
            batch_size=args.batch_size, seed=args.seed, precision=args.precision, plot=False,
        )  # fmt: skip
        trainer = Trainer(options)
        order = epoch_order(len(trainer.records), args.seed, 0)
        batches = iterate_batches(trainer.data, order, args.batch_size, 0)
        durations, atoms, edges = [], 0, 0
        for index in range(args.warmup + args.steps):
            _, batch = next(batches)
            start = time.perf_counter()
            trainer._train_step(batch)
            if index >= args.warmup:
                durations.append(time.perf_counter() - start)
                atoms += batch.batch_index.shape[0]
                edges += batch.edge_index.shape[1]
        trainer.close()
    return {
        "preset": preset,
        "steps_per_s": len(durations) / sum(durations),
        "median_step_ms": 1000 * statistics.median(durations),
        "atoms_per_batch": atoms / len(durations),
        "edges_per_batch": edges / len(durations),
        "step_seconds": durations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", type=Path, default=DEFAULT_TRAIN, help="Training set (CDVAE-style CSV).")
    add("--task", default="csp", choices=["csp", "dng"])
    add("--presets", default="medium", help="Comma-separated network presets.")
    add("--batch-size", type=int, default=64)
    add("--precision", default="fp32", choices=["fp32", "bf16"], help="As kldm train's.")
    add("--steps", type=int, default=40, help="Timed optimizer steps per preset.")
    add("--warmup", type=int, default=10, help="Untimed steps before timing.")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=None, help="CPU threads (default: physical cores).")
    add("--out", type=Path, default=Path("benchmarks/results"))
    add("--tag", default=None, help="Name of the JSON file.")
    args = parser.parse_args()

    import kldm_cli
    from kldm_cli.sampling import set_threads

    threads = set_threads(args.threads)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": commit or None, "kldm_cli": str(Path(kldm_cli.__file__).parent),
        "data": str(args.data), "task": args.task,
        "batch_size": args.batch_size, "precision": args.precision, "threads": threads,
        "load_average_start": os.getloadavg(), "presets": [],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    default_tag = f"train-{args.task}-b{args.batch_size}-{args.precision}-{threads}t"
    path = args.out / f"{args.tag or default_tag}.json"
    for preset in args.presets.split(","):
        row = time_preset(args, preset)
        report["presets"].append(row)
        print(
            f"{preset}: {row['steps_per_s']:.2f} steps/s (median {row['median_step_ms']:.0f} "
            f"ms/step; {row['atoms_per_batch']:.0f} atoms, {row['edges_per_batch']:.0f} edges "
            "per batch)",
            flush=True,
        )
        path.write_text(json.dumps(report, indent=2) + "\n")
    report["load_average_end"] = os.getloadavg()
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

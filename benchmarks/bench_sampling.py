"""Sampling-engine benchmark: structures/s, ms per network evaluation, peak memory, match rate.

One command prints a table and writes JSON::

    python benchmarks/bench_sampling.py --workload csp --preset small --steps 50
    python benchmarks/bench_sampling.py --workload dng --preset paper --device cuda --steps 1000

Workloads: ``csp`` samples one structure for each of the first ``--num`` (default 256)
compositions of MP-20 test; ``dng`` generates ``--num`` (default 1000) crystals with atom counts
from the model's training distribution. Each case runs in its own subprocess so that peak memory
(``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) belongs to that case alone.

Engines compared at equal steps and seed:

- ``baseline``: the straightforward formulation of the same network (first edge-MLP layer on the
  concatenated per-edge input, Fourier features recomputed in every layer), as the reference
  implementation computes it;
- ``fused``: kldm's engine (per-node split of the first edge layer, features computed once per
  step, inference mode, atom-budget batches).

With ``--weights`` the CSP samples are also matched to the test structures (StructureMatcher,
stol=0.5, angle_tol=10, ltol=0.3) so that speed never silently costs quality; without weights a
randomly initialised network of the preset's size is timed (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_TEST = DATA / "mp_20" / "test.csv.gz"
DEFAULT_TRAIN = DATA / "mp_20" / "train.csv.gz"


def build_model(args: argparse.Namespace):
    """The model to time: trained weights if given, else a random network of the preset."""
    from kldm_cli.predict import load_model
    from kldm_cli.train import TrainOptions, build_config

    if args.weights:
        return load_model(args.weights, args.workload, args.device).model
    import torch

    from kldm_cli.data.readers import load_dataset
    from kldm_cli.model import KLDM

    dataset = load_dataset(args.train)
    options = TrainOptions(data=args.train, out=Path("."), task=args.workload, preset=args.preset)
    config = build_config(options, dataset.records, dataset.content_hash)
    torch.manual_seed(0)
    return KLDM(config).to(args.device).eval()


def run_case(args: argparse.Namespace) -> dict:
    """Time one (workload, engine) case in this process; returns its figures."""
    import torch

    from kldm_cli.sampling import batch_generator, plan_batches, sample

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    model.network.fused = args.engine == "fused"
    if args.workload == "csp":
        from kldm_cli.data.readers import load_dataset

        records = load_dataset(args.data).records[: args.num]
        compositions = [r.atomic_numbers.tolist() for r in records]
    else:
        from kldm_cli.generate import plan_num_atoms

        compositions = [[0] * k for k in plan_num_atoms(model.config, args.num, 0, None)]
    sampler = type(model.config.sampler)(method=args.sampler, num_steps=args.steps)
    nfe_per_batch = args.steps * (2 if args.sampler == "pc" else 1)
    batches = plan_batches([len(c) for c in compositions], args.batch_atoms)
    frac_coords, structures = [], []
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    for number, indices in enumerate(batches):
        num_atoms = torch.tensor([len(compositions[i]) for i in indices])
        numbers = None
        if args.workload == "csp":
            numbers = torch.tensor([z for i in indices for z in compositions[i]])
        samples = sample(
            model, num_atoms, numbers, sampler, batch_generator(0, number, args.device)
        )
        frac_coords.append(samples.frac_coords)
        if args.weights and args.workload == "csp":
            from kldm_cli.sampling import samples_to_records

            structures += [r.to_structure() for r in samples_to_records(samples)]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    figures = {
        "workload": args.workload, "engine": args.engine, "preset": args.preset,
        "device": args.device, "threads": torch.get_num_threads(), "steps": args.steps,
        "sampler": args.sampler, "structures": len(compositions), "batches": len(batches),
        "seconds": seconds, "structures_per_s": len(compositions) / seconds,
        "ms_per_network_eval": 1000 * seconds / (nfe_per_batch * len(batches)),
    }  # fmt: skip
    if args.device.startswith("cuda"):
        figures["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        figures["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(torch.cat(frac_coords), args.coords_out)  # compared across engines
    if structures:
        from kldm_cli.metrics.csp import match_structures

        targets = [r.to_structure() for r in records]
        result = match_structures([[s] for s in structures], targets)
        figures["match_rate"] = result.match_rate
        figures["rmse"] = result.rmse
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["csp", "dng"], default="csp")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--weights", default=None, help="Model folder (else random weights).")
    parser.add_argument("--num", type=int, default=None, help="256 (csp) / 1000 (dng).")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", choices=["pc", "em"], default="pc")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-atoms", type=int, default=4096)
    parser.add_argument("--engines", default="baseline,fused")
    parser.add_argument("--data", type=Path, default=DEFAULT_TEST)
    parser.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--coords-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.num = args.num or (256 if args.workload == "csp" else 1000)
    if args.engine:  # child process: one case
        print(json.dumps(run_case(args)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.workload}-{args.preset}-{args.device.replace(':', '')}-{args.steps}{args.sampler}"
    cases = []
    for engine in args.engines.split(","):
        coords = args.out / f"{tag}-{engine}-coords.pt"
        command = [sys.executable, __file__, *sys.argv[1:], "--engine", engine,
                   "--coords-out", str(coords)]  # fmt: skip
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        cases.append(json.loads(output.strip().splitlines()[-1]))
    report = {"cases": cases, "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count()}  # fmt: skip
    if len(cases) == 2:
        import torch

        a, b = (torch.load(args.out / f"{tag}-{c['engine']}-coords.pt") for c in cases)
        diff = torch.remainder(a - b + 0.5, 1.0) - 0.5
        report["max_coord_difference"] = float(diff.abs().max())
        report["speedup"] = cases[0]["seconds"] / cases[1]["seconds"]
    for engine in args.engines.split(","):
        (args.out / f"{tag}-{engine}-coords.pt").unlink(missing_ok=True)
    (args.out / f"{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kldm sampling benchmark")
    columns = [
        "engine", "workload", "preset", "device", "threads", "steps", "sampler",
        "structures_per_s", "ms_per_network_eval", "peak_memory_mb", "match_rate",
    ]  # fmt: skip
    for column in columns:
        table.add_column(column)
    for case in report["cases"]:
        row = []
        for column in columns:
            value = case.get(column, "–")
            row.append(f"{value:.3g}" if isinstance(value, float) else str(value))
        table.add_row(*row)
    console = Console()
    console.print(table)
    if "speedup" in report:
        console.print(
            f"speed-up fused/baseline: {report['speedup']:.2f}×; max |Δ frac coord| between "
            f"engines for the same seed: {report['max_coord_difference']:.2e}"
        )


if __name__ == "__main__":
    main()

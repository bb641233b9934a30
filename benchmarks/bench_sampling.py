"""Sampling-engine benchmark: structures/s, ms per network evaluation, peak memory, match rate.

One command prints a table and writes JSON (``--out``, default ``benchmarks/results``)::

    python benchmarks/bench_sampling.py --threads 1                       # CSP+DNG, small+paper
    python benchmarks/bench_sampling.py --workloads csp --presets small --steps 20 --repeats 3
    python benchmarks/bench_sampling.py --workloads csp --weights runs/csp-mp20 --steps 100

Workloads: ``csp`` samples one structure for each of the first ``--num`` (default 256)
compositions of MP-20 test; ``dng`` generates ``--num`` (default 1000) crystals with atom counts
drawn from the model's training distribution. Batches are filled up to ``--batch-atoms`` atoms
exactly as ``kldm predict`` / ``kldm generate`` fill them.

Engines, compared at equal steps, seed and weights:

- ``baseline``: the reference formulation of the same network (``CSPNet(fused=False)``: first
  edge-MLP layer on the concatenated per-edge input, Fourier features recomputed in every layer,
  ``scatter_reduce`` mean);
- ``fused``: kldm's engine (per-atom split of the first edge layer, Fourier block once per
  unordered atom pair, state-independent features once per batch, in-place activations);
- CUDA only, opt-in: ``fused-graph`` (step loop replayed from a CUDA graph), ``fused-bf16``
  (bf16 autocast), ``fused-graph-bf16``;
- ``baseline-reordered``, a control: the baseline with its edge list reversed (the same arithmetic,
  float sums in another order), showing how much the sampler itself amplifies rounding differences
  over many steps.

Every (case, engine, repeat) runs in its own subprocess, repeats interleaved across engines
(baseline, fused, baseline, fused, ...) so that a change in machine load hits both alike. Each
reports wall time and the process's CPU time over the sampling loop only (model and data loading
excluded); on a machine shared with other jobs CPU time is the steadier of the two. Peak memory
is the sampling loop's own: the resident-set high-water mark reset just before it (Linux
``/proc/self/clear_refs``; otherwise the whole process's ``ru_maxrss``), or
``torch.cuda.max_memory_allocated`` on CUDA.

Without ``--weights`` a randomly initialised network of each preset is timed (speed does not depend
on the weights; both engines get the same random weights). With ``--weights`` (a CSP model folder)
the samples are also matched to the test structures (StructureMatcher stol=0.5, angle_tol=10,
ltol=0.3) so that speed never silently costs quality. The samples of every engine are compared
with the baseline's for the same seed (max |Δ| of fractional coordinates, lattice lengths and
angles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_TEST = DATA / "mp_20" / "test.csv.gz"
DEFAULT_TRAIN = DATA / "mp_20" / "train.csv.gz"
ENGINES = (
    "baseline", "fused", "fused-graph", "fused-bf16", "fused-graph-bf16", "baseline-reordered",
)  # fmt: skip
DEFAULT_NUM = {"csp": 256, "dng": 1000}


# ---------------------------------------------------------------------- child: one case
def _reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str) -> float | None:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process in MiB, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _workload(args: argparse.Namespace, model) -> tuple[list[list[int]], list]:
    """Atom lists of the crystals to sample (DNG: placeholders, only their length counts) and
    the target records (CSP)."""
    if args.workload == "csp":
        from kldm_cli.data.readers import load_dataset

        records = load_dataset(args.data).records[: args.num]
        return [r.atomic_numbers.tolist() for r in records], records
    from kldm_cli.generate import plan_num_atoms

    return [[0] * k for k in plan_num_atoms(model.config, args.num, 0, None)], []


def run_case(args: argparse.Namespace) -> dict:
    """Time one (workload, preset, device, engine) case in this process."""
    import torch

    from kldm_cli.config import SamplerConfig
    from kldm_cli.sampling import batch_generator, load_model, plan_batches, sample, set_threads

    threads = set_threads(args.threads)
    model = load_model(str(args.model), args.workload, args.device).model
    model.network.fused = not args.engine.startswith("baseline")
    if args.engine == "baseline-reordered":
        # Control: the baseline with its edges in reversed order, i.e. the same arithmetic with
        # float sums taken in another order; how far it drifts from the baseline is the drift
        # the sampler itself gives to rounding differences.
        import kldm_cli.sampling.loop

        edges = kldm_cli.sampling.loop.fully_connected_edges
        kldm_cli.sampling.loop.fully_connected_edges = lambda num_atoms: edges(num_atoms).flip(1)
    engine = {"cuda_graph": "graph" in args.engine, "bf16": "bf16" in args.engine}
    compositions, records = _workload(args, model)
    sampler = SamplerConfig(method=args.sampler, num_steps=args.steps, time_grid=args.grid)
    batches = plan_batches([len(c) for c in compositions], args.batch_atoms)

    def run_batch(number: int, indices: list[int], sampler: SamplerConfig):
        num_atoms = torch.tensor([len(compositions[i]) for i in indices])
        numbers = None
        if args.workload == "csp":
            numbers = torch.tensor([z for i in indices for z in compositions[i]])
        generator = batch_generator(args.seed, number, args.device)
        return sample(model, num_atoms, numbers, sampler, generator, **engine)

    # Warm-up (one-time library initialisation, not part of the figures): one step, 8 crystals.
    run_batch(0, batches[0][:8], SamplerConfig(method=args.sampler, num_steps=1))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb("VmRSS")
    peak_reset = _reset_peak_rss()
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    results = [run_batch(number, indices, sampler) for number, indices in enumerate(batches)]
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    evaluations = args.steps * (2 if args.sampler == "pc" else 1) * len(batches)
    figures = {
        "workload": args.workload, "preset": args.preset, "device": args.device,
        "engine": args.engine, "threads": threads, "steps": args.steps, "sampler": args.sampler,
        "grid": args.grid, "structures": len(compositions), "atoms": sum(map(len, compositions)),
        "batches": len(batches), "network_evaluations": evaluations, "seconds": wall,
        "cpu_seconds": cpu, "structures_per_s": len(compositions) / wall,
        "ms_per_network_eval": 1000 * wall / evaluations,
        "cpu_ms_per_network_eval": 1000 * cpu / evaluations,
        "load_average": [load_before, os.getloadavg()[0]],
    }  # fmt: skip
    if cuda:
        figures["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        figures["memory_measure"] = "torch.cuda.max_memory_allocated"
    elif peak_reset and _rss_mb("VmHWM") is not None:
        figures["peak_memory_mb"] = _rss_mb("VmHWM")
        figures["memory_measure"] = "peak RSS of the sampling loop (VmHWM after clear_refs)"
    else:
        figures["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures["memory_measure"] = "peak RSS of the whole process (ru_maxrss)"
    figures["rss_before_mb"] = rss_before
    torch.save(
        {
            "frac_coords": torch.cat([s.frac_coords for s in results]),
            "lengths": torch.cat([s.lengths for s in results]),
            "angles": torch.cat([s.angles for s in results]),
            "atomic_numbers": torch.cat([s.atomic_numbers for s in results]),
        },
        args.samples_out,
    )
    if args.match and records:
        from kldm_cli.evaluation.metrics.csp import match_structures
        from kldm_cli.sampling import samples_to_records

        structures = [r.to_structure() for s in results for r in samples_to_records(s)]
        order = [i for indices in batches for i in indices]
        candidates: list = [None] * len(structures)
        for index, structure in zip(order, structures, strict=True):
            candidates[index] = [structure]
        result = match_structures(candidates, [r.to_structure() for r in records], workers=1)
        figures["match_rate"] = result.match_rate
        figures["rmse"] = result.rmse
    return figures


# ---------------------------------------------------------------------- parent
def random_model(task: str, preset: str, train: Path, folder: Path) -> Path:
    """A model folder with a randomly initialised network of ``preset`` (seed 0), its config
    derived from the training set like ``kldm train`` derives it."""
    import torch

    from kldm_cli.data.readers import load_dataset
    from kldm_cli.hub import write_model_folder
    from kldm_cli.model import KLDM
    from kldm_cli.training import TrainOptions, build_config

    dataset = load_dataset(train)
    options = TrainOptions(data=train, out=folder, task=task, preset=preset)
    config = build_config(options, dataset.records, dataset.content_hash)
    torch.manual_seed(0)
    model = KLDM(config)
    card = f"random {preset} {task} network for benchmarks/bench_sampling.py (not trained)"
    return write_model_folder(folder, model.network.state_dict(), config, card)


def _preset_of(folder: Path) -> str:
    """``"<preset> (weights)"`` from a model folder's config.json provenance."""
    preset = json.loads((folder / "config.json").read_text()).get("provenance", {}).get("preset")
    return f"{preset or 'custom'} (weights)"


def compare(reference: Path, other: Path) -> dict:
    """Largest differences between two engines' samples for the same seed."""
    import torch

    a, b = torch.load(reference), torch.load(other)
    coords = torch.remainder(a["frac_coords"] - b["frac_coords"] + 0.5, 1.0) - 0.5
    return {
        "max_abs_diff_frac_coords": float(coords.abs().max()),
        "max_abs_diff_lengths_angstrom": float((a["lengths"] - b["lengths"]).abs().max()),
        "max_abs_diff_angles_degrees": float((a["angles"] - b["angles"]).abs().max()),
        "atom_type_mismatches": int((a["atomic_numbers"] != b["atomic_numbers"]).sum()),
    }


def run_child(args: argparse.Namespace, case: dict, engine: str, samples: Path) -> dict:
    command = [
        sys.executable, __file__, "--child", "--workload", case["workload"],
        "--preset", case["preset"], "--device", case["device"], "--engine", engine,
        "--model", str(case["model"]), "--num", str(case["num"]), "--steps", str(args.steps),
        "--sampler", args.sampler, "--grid", args.grid, "--seed", str(args.seed),
        "--batch-atoms", str(args.batch_atoms), "--data", str(args.data),
        "--samples-out", str(samples),
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if case["match"]:
        command.append("--match")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"engine": engine, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """Median over repeats of the timing figures; the rest from the first repeat."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    summary = dict(good[0])
    for key in ("seconds", "cpu_seconds", "ms_per_network_eval", "cpu_ms_per_network_eval",
                "peak_memory_mb"):  # fmt: skip
        summary[key] = statistics.median(r[key] for r in good)
    summary["structures_per_s"] = summary["structures"] / summary["seconds"]
    summary["repeats"] = len(good)
    summary["seconds_all"] = [r["seconds"] for r in good]
    summary["cpu_seconds_all"] = [r["cpu_seconds"] for r in good]
    summary["load_average"] = [x for r in good for x in r["load_average"]]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--workloads", default="csp,dng", help="Comma-separated: csp, dng.")
    add("--presets", default="small,paper", help="Network presets timed with random weights.")
    add("--weights", default=None, help="CSP model folder: time it and report its match rate.")
    add("--dng-weights", default=None, help="DNG model folder to time instead of random ones.")
    add("--devices", default=None, help="Comma-separated (default: cpu, and cuda if present).")
    add("--engines", default=None, help=f"Comma-separated from {', '.join(ENGINES)}.")
    add("--num", type=int, default=None, help="Structures per case (csp 256, dng 1000).")
    add("--steps", type=int, default=10, help="Sampler steps (same for every engine).")
    add("--sampler", choices=["pc", "em"], default="pc")
    add("--grid", default="uniform", help="Time grid: uniform or power[:RHO].")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=None, help="CPU threads (default: physical cores).")
    add("--repeats", type=int, default=3, help="Interleaved repeats per engine (median kept).")
    add("--batch-atoms", type=int, default=4096)
    add("--data", type=Path, default=DEFAULT_TEST, help="CSP compositions and targets.")
    add("--train", type=Path, default=DEFAULT_TRAIN, help="Training set (random-model configs).")
    add("--out", type=Path, default=Path("benchmarks/results"))
    add("--tag", default=None, help="Name of the JSON file (default: from the options).")
    # child-process options
    add("--child", action="store_true", help=argparse.SUPPRESS)
    add("--workload", help=argparse.SUPPRESS)
    add("--preset", help=argparse.SUPPRESS)
    add("--device", help=argparse.SUPPRESS)
    add("--engine", help=argparse.SUPPRESS)
    add("--model", help=argparse.SUPPRESS)
    add("--match", action="store_true", help=argparse.SUPPRESS)
    add("--samples-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args)))
        return

    import torch

    devices = (args.devices or ("cpu,cuda" if torch.cuda.is_available() else "cpu")).split(",")
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--devices {device}: no CUDA GPU is available here")
    workloads = args.workloads.split(",")
    if unknown := set(workloads) - set(DEFAULT_NUM):
        parser.error(f"unknown workloads {sorted(unknown)}; choose from csp, dng")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "load_average_start": os.getloadavg(), "cases": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kldm-bench-") as scratch:
        cases = []
        for workload in workloads:
            weights = args.weights if workload == "csp" else args.dng_weights
            models = (
                [(_preset_of(Path(weights)), Path(weights))]
                if weights
                else [
                    (p, random_model(workload, p, args.train, Path(scratch) / f"{workload}-{p}"))
                    for p in args.presets.split(",")
                ]
            )
            for preset, model in models:
                for device in devices:
                    cases.append({
                        "workload": workload, "preset": preset, "device": device, "model": model,
                        "num": args.num or DEFAULT_NUM[workload],
                        "match": workload == "csp" and bool(weights),
                    })  # fmt: skip
        for case in cases:
            engines = (args.engines or "baseline,fused").split(",")
            if args.engines is None and case["device"].startswith("cuda"):
                engines += ["fused-graph", "fused-bf16"]
            if unknown := set(engines) - set(ENGINES):
                parser.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
            runs: dict[str, list[dict]] = {engine: [] for engine in engines}
            samples = {e: Path(scratch) / f"{len(report['cases'])}-{e}.pt" for e in engines}
            for repeat in range(args.repeats):
                for engine in engines:
                    child_case = dict(case, match=case["match"] and repeat == 0)
                    runs[engine].append(run_child(args, child_case, engine, samples[engine]))
                    print(_progress_line(runs[engine][-1], repeat), file=sys.stderr, flush=True)
            summary = {engine: summarise(runs[engine]) for engine in engines}
            reference = summary.get("baseline")
            for engine, figures in summary.items():
                if reference and "error" not in reference and "error" not in figures:
                    figures["speedup_vs_baseline"] = reference["seconds"] / figures["seconds"]
                    figures["cpu_speedup_vs_baseline"] = (
                        reference["cpu_seconds"] / figures["cpu_seconds"]
                    )
                    if engine != "baseline":
                        figures.update(compare(samples["baseline"], samples[engine]))
                report["cases"].append(figures)
    report["load_average_end"] = os.getloadavg()
    tag = args.tag or (
        f"{args.workloads.replace(',', '+')}-{args.presets.replace(',', '+')}-"
        f"{args.steps}{args.sampler}-{args.grid.replace(':', '')}"
        + (f"-{args.threads}t" if args.threads else "")
        + ("-weights" if args.weights else "")
    )
    path = args.out / f"{tag}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"wrote {path}")


def _progress_line(figures: dict, repeat: int) -> str:
    if "error" in figures:
        return f"  {figures['engine']}: FAILED {figures['error']}"
    return (
        f"  {figures['workload']} {figures['preset']} {figures['device']} {figures['engine']} "
        f"#{repeat}: {figures['seconds']:.1f} s wall, {figures['cpu_seconds']:.1f} s CPU, "
        f"load {figures['load_average'][0]:.1f}"
    )


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = {
        "workload": "workload", "preset": "preset", "device": "device", "engine": "engine",
        "threads": "thr", "steps": "steps", "structures": "structs",
        "structures_per_s": "structs/s", "ms_per_network_eval": "ms/eval",
        "cpu_ms_per_network_eval": "CPU ms/eval", "speedup_vs_baseline": "speed-up",
        "cpu_speedup_vs_baseline": "CPU speed-up", "peak_memory_mb": "peak MiB",
        "max_abs_diff_frac_coords": "max|Δf|", "match_rate": "match",
    }  # fmt: skip
    table = Table(title="kldm sampling benchmark (medians over repeats)")
    for title in columns.values():
        table.add_column(title)
    for case in report["cases"]:
        if "error" in case:
            table.add_row(*[case.get(k, "") if k == "engine" else "" for k in columns])
            table.add_row("", "", "", f"error: {case['error']}")
            continue
        row = []
        for key in columns:
            value = case.get(key, "–")
            if isinstance(value, float):
                value = f"{value:.2e}" if key.startswith("max_abs") else f"{value:.3g}"
            row.append(str(value))
        table.add_row(*row)
    Console(width=200, emoji=False).print(table)


if __name__ == "__main__":
    main()

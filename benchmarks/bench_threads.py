"""CPU threads benchmark: the default thread setting against one thread, for tiny and large batches.

One command prints a table and writes JSON (``--out``, default ``benchmarks/results``)::

    python benchmarks/bench_threads.py --tag threads-busy
    python benchmarks/bench_threads.py --cases nacl --repeats 3

Each case samples CSP structures with the bundled ``weights/kldm-csp-mp20`` (speed does not depend
on the weights) under these settings, each run in its own subprocess, settings interleaved
(1, 2, 2-passive, default, 1, 2, ...) so that a change in machine load hits all alike:

- ``1``: ``--threads 1``;
- ``2-spin``: two threads with GNU OpenMP's own waiting (``OMP_WAIT_POLICY`` unset when torch is
  loaded: a thread spins for a while at every barrier) — kldm's default before issue 36;
- ``2-passive``: two threads, ``OMP_WAIT_POLICY=PASSIVE`` (a waiting thread sleeps at once);
- ``default``: what ``kldm predict`` does without ``--threads`` (``kldm_cli.threads``).

Wall time and the process's CPU time over the sampling loop only (model loading excluded), and the
machine's 1-minute load average and busiest other processes at the start, are recorded: compare
settings within one run of this script, never across machines or loads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "kldm-csp-mp20"
#: name -> (formula, structures, sampler steps): 4, 140 and 1,001 atoms in one batch.
CASES = {
    "nacl": ("NaCl", 2, 100),
    "lfp20": ("LiFePO4", 20, 20),
    "lfp143": ("LiFePO4", 143, 4),
}
SETTINGS = ("1", "2-spin", "2-passive", "default")


def worker(setting: str, formula: str, num: int, steps: int) -> dict:
    """Run in a fresh process: set up threads as ``setting`` says, sample, time the loop."""
    if setting in ("1", "2-spin"):
        os.environ.pop("OMP_WAIT_POLICY", None)
        import torch  # loaded before kldm_cli: OpenMP reads its environment now

        torch.set_num_threads(int(setting[0]))
    elif setting == "2-passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        import torch

        torch.set_num_threads(2)
    from kldm_cli.predict import plan_compositions
    from kldm_cli.sampling import load_model, sample_model
    from kldm_cli.threads import default_threads, set_threads

    loaded = load_model(str(WEIGHTS), "csp")
    plan = plan_compositions(loaded.model.config, formula, num)
    if setting == "default":
        set_threads(None, work_atoms=sum(len(c) for c in plan))
    import torch

    wall, cpu = time.perf_counter(), time.process_time()
    sample_model(loaded.model, plan, 1, steps=steps, seed=0, batch_atoms=4096)
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "default_threads": default_threads(sum(len(c) for c in plan)),
        "load_average_1min": os.getloadavg()[0],
    }


def busiest_processes(count: int = 4) -> list[str]:
    """The ``count`` busiest other processes (``ps``), to record what shared the machine."""
    try:
        lines = subprocess.run(
            ["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[1 : count + 1]
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip()[:160] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES)
    )
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="threads")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        setting, formula, num, steps = args.worker
        print(json.dumps(worker(setting, formula, int(num), int(steps))))
        return
    settings = args.settings.split(",")
    context = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min_start": os.getloadavg()[0],
        "busiest_processes_start": busiest_processes(),
    }
    rows = []
    for case in args.cases.split(","):
        formula, num, steps = CASES[case]
        runs: dict[str, list[dict]] = {s: [] for s in settings}
        for _ in range(args.repeats):
            for setting in settings:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    setting,
                    formula,
                    str(num),
                    str(steps),
                ]
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for setting in settings:
            walls = [r["wall_s"] for r in runs[setting]]
            rows.append({
                "case": f"{formula} x{num}, {steps} PC steps",
                "atoms": num * len(formula_atoms(formula)),
                "setting": setting, "threads": runs[setting][0]["threads"],
                "wall_s_median": statistics.median(walls), "wall_s": walls,
                "cpu_s": [r["cpu_s"] for r in runs[setting]],
            })  # fmt: skip
    context["load_average_1min_end"] = os.getloadavg()[0]
    context["busiest_processes_end"] = busiest_processes()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps({**context, "rows": rows}, indent=1))
    print(f"load average (1 min) {context['load_average_1min_start']:.1f} -> "
          f"{context['load_average_1min_end']:.1f}; busiest at start:")  # fmt: skip
    for line in context["busiest_processes_start"]:
        print("   ", line)
    print(f"{'case':34} {'setting':10} {'threads':>7} {'wall s (median)':>16} {'CPU s':>14}")
    for row in rows:
        cpu = "/".join(f"{c:.1f}" for c in row["cpu_s"])
        print(f"{row['case']:34} {row['setting']:10} {row['threads']:>7} "
              f"{row['wall_s_median']:>16.2f} {cpu:>14}")  # fmt: skip


def formula_atoms(formula: str) -> list[int]:
    from kldm_cli.data.formula import parse_formula

    return parse_formula(formula)


if __name__ == "__main__":
    main()

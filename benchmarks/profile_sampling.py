"""Profile the sampling loop: where the time of a network evaluation goes, per operator.

One command prints ``torch.profiler``'s table of operators (self CPU time) for each engine::

    python benchmarks/profile_sampling.py --weights runs/csp-mp20 --num 256 --steps 5 --threads 1

CSP on the first ``--num`` compositions of ``--data`` (one batch), ``--steps`` sampler steps after
a one-step warm-up. Without ``--weights`` a random network of ``--preset`` is profiled.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sampling import DEFAULT_TEST, DEFAULT_TRAIN, random_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--weights", default=None, help="CSP model folder (else a random --preset network).")
    add("--preset", default="small")
    add("--num", type=int, default=256)
    add("--steps", type=int, default=5)
    add("--sampler", choices=["pc", "em"], default="pc")
    add("--engines", default="baseline,fused")
    add("--threads", type=int, default=None)
    add("--rows", type=int, default=15, help="Operators shown per engine.")
    add("--data", type=Path, default=DEFAULT_TEST)
    add("--train", type=Path, default=DEFAULT_TRAIN)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from kldm_cli.config import SamplerConfig
    from kldm_cli.data.readers import load_dataset
    from kldm_cli.sampling import batch_generator, load_model, sample, set_threads

    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights or random_model("csp", args.preset, args.train, Path(scratch))
        model = load_model(str(weights), "csp").model
    records = load_dataset(args.data).records[: args.num]
    num_atoms = torch.tensor([r.num_atoms for r in records])
    numbers = torch.tensor([z for r in records for z in r.atomic_numbers.tolist()])
    edges = int((num_atoms * (num_atoms - 1)).sum())
    print(f"{len(records)} crystals, {int(num_atoms.sum())} atoms, {edges} edges, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for engine in args.engines.split(","):
        model.network.fused = engine == "fused"
        sample(model, num_atoms, numbers, SamplerConfig(method=args.sampler, num_steps=1))
        sampler = SamplerConfig(method=args.sampler, num_steps=args.steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sample(model, num_atoms, numbers, sampler, batch_generator(0, 0))
        evaluations = args.steps * (2 if args.sampler == "pc" else 1)
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1000
        print(f"\n== {engine}: {total / evaluations:.0f} ms CPU per network evaluation (profiled)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

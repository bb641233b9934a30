"""Held-out loss of model folders on the MPTS-52 selection rows, split at 20 atoms.

The same noise draws (seeds 0-3) for every model, so the numbers compare models; a falling loss
on the large cells says the fine-tuning is learning them before any sample matches.

    python training/csp-mpts52/loss_by_size.py weights/kldm-csp-mp20 runs/csp-mpts52 \\
        --data runs/csp-mpts52-data/select.csv.gz --rows 200

With ``--times 0.01,0.1,0.3,0.6`` the velocity loss is also given at each of those fixed times
(t01 in (0, 1]; 2 noise draws each): where in the noise range a model fails, not only how much.
"""

from __future__ import annotations

import argparse

import torch

from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.readers import load_dataset
from kldm_cli.sampling import load_model
from kldm_cli.threads import set_threads


def mean_losses(
    model, records, seeds: int = 4, batch_size: int = 32, time: float | None = None
) -> tuple[float, float]:
    """Velocity and lattice loss averaged per structure over ``seeds`` noise draws.

    ``time``: every crystal at this t01 instead of t01 ~ U(t_min, 1].
    """
    velocity = lattice = 0.0
    count = 0
    with torch.no_grad():
        for seed in range(seeds):
            generator = torch.Generator().manual_seed(seed)
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                t01 = None if time is None else torch.full((len(chunk),), time)
                losses = model.loss(CrystalBatch.from_records(chunk), generator=generator, t01=t01)
                velocity += float(losses.velocity) * len(chunk)
                lattice += float(losses.lattice) * len(chunk)
                count += len(chunk)
    return velocity / count, lattice / count


def describe(model, name: str, group, times: list[float]) -> str:
    """One size group: mean velocity / lattice loss, then the velocity loss at each fixed time."""
    velocity, lattice = mean_losses(model, group)
    text = f"{name} ({len(group)}): velocity {velocity:.3f}, lattice {lattice:.3f}"
    if times:
        at = [f"{t:g}: {mean_losses(model, group, seeds=2, time=t)[0]:.3f}" for t in times]
        text += " [velocity at t01 " + ", ".join(at) + "]"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default="runs/csp-mpts52-data/select.csv.gz")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--times", default="", help="comma-separated fixed t01 values")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    times = [float(t) for t in args.times.split(",") if t.strip()]
    if any(not 0.0 < t <= 1.0 for t in times):
        parser.error(f"--times must lie in (0, 1], got {args.times}")
    set_threads(args.threads)
    records = load_dataset(args.data).records[: args.rows]
    for folder in args.models:
        model = load_model(folder, "csp").model
        known = set(model.config.elements)
        usable = [r for r in records if {int(z) for z in r.atomic_numbers} <= known]
        groups = (
            ("<= 20 atoms", [r for r in usable if r.num_atoms <= 20]),
            ("> 20 atoms", [r for r in usable if r.num_atoms > 20]),
        )
        parts = [describe(model, name, group, times) for name, group in groups if group]
        print(f"{folder}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()

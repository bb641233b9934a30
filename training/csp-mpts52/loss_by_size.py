"""Held-out loss of model folders on the MPTS-52 selection rows, split at 20 atoms.

The same noise draws (seeds 0-3) for every model, so the numbers compare models; a falling loss
on the large cells says the fine-tuning is learning them before any sample matches.

    python training/csp-mpts52/loss_by_size.py weights/kldm-csp-mp20 runs/csp-mpts52 \\
        --data runs/csp-mpts52-data/select.csv.gz --rows 200
"""

from __future__ import annotations

import argparse

import torch

from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.readers import load_dataset
from kldm_cli.sampling import load_model
from kldm_cli.threads import set_threads


def mean_losses(model, records, seeds: int = 4, batch_size: int = 32) -> tuple[float, float]:
    """Velocity and lattice loss averaged per structure over ``seeds`` noise draws."""
    velocity = lattice = 0.0
    count = 0
    with torch.no_grad():
        for seed in range(seeds):
            generator = torch.Generator().manual_seed(seed)
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                losses = model.loss(CrystalBatch.from_records(chunk), generator=generator)
                velocity += float(losses.velocity) * len(chunk)
                lattice += float(losses.lattice) * len(chunk)
                count += len(chunk)
    return velocity / count, lattice / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default="runs/csp-mpts52-data/select.csv.gz")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    records = load_dataset(args.data).records[: args.rows]
    for folder in args.models:
        model = load_model(folder, "csp").model
        known = set(model.config.elements)
        usable = [r for r in records if {int(z) for z in r.atomic_numbers} <= known]
        parts = []
        for name, group in (
            ("<= 20 atoms", [r for r in usable if r.num_atoms <= 20]),
            ("> 20 atoms", [r for r in usable if r.num_atoms > 20]),
        ):
            velocity, lattice = mean_losses(model, group)
            parts.append(f"{name} ({len(group)}): velocity {velocity:.3f}, lattice {lattice:.3f}")
        print(f"{folder}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()

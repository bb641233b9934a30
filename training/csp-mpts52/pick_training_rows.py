"""Write a fixed random pick of training rows, to test a model on cells it was trained on.

    python training/csp-mpts52/pick_training_rows.py runs/csp-mpts52-data/train.csv.gz \\
        runs/csp-mpts52-data/train_pick.csv.gz

The output holds 114 rows of more than 20 atoms, then 86 of at most 20 (the sizes of the
selection rows' split), drawn with seed 0; ``--first N`` keeps only its first N rows (all large
for N <= 114). ``--atoms 13-20 --first 64`` draws 64 rows of 13 to 20 atoms instead.

A model that cannot sample the large cells it was trained on has not learned them at all, which
is a different problem from not generalising to new ones.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random

from kldm_cli.data.readers import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("out")
    parser.add_argument("--first", type=int, default=None)
    parser.add_argument("--atoms", default=None, help="LO-HI: draw --first rows of LO..HI atoms")
    args = parser.parse_args()
    csv.field_size_limit(1 << 30)
    with gzip.open(args.train, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = load_dataset(args.train).records
    if len(records) != len(rows):
        raise SystemExit(f"{args.train}: {len(rows) - len(records)} rows could not be read")

    def sized(low: int, high: int) -> list[dict[str, str]]:
        """The rows of ``low`` to ``high`` atoms."""
        return [row for row, rec in zip(rows, records, strict=True) if low <= rec.num_atoms <= high]

    rng = random.Random(0)
    if args.atoms:
        chosen = sized(*(int(n) for n in args.atoms.split("-")))
        picked = rng.sample(chosen, args.first or len(chosen))
    else:
        picked = (rng.sample(sized(21, 10**9), 114) + rng.sample(sized(1, 20), 86))[: args.first]
    with gzip.open(args.out, "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    print(f"{len(picked)} rows written to {args.out}")


if __name__ == "__main__":
    main()

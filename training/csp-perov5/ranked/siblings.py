"""Perov-5 ranked top-1, split by whether the test row's composition has other structures.

Perov-5 holds several structures of one composition (e.g. A and B sites swapped). A search that
ranks by energy can put only one of them first, so those rows (``siblings``) cannot all be
matched at top-1. This splits a ``kldm evaluate csp --rank`` record's top-1 into rows whose
reduced composition occurs once in train + val + test, and rows that share it, the latter also by
whether the test structure has the lowest ``heat_all`` (the dataset's DFT heat of formation)
among its siblings.

    python training/csp-perov5/ranked/siblings.py RECORD.json --data ../shared/data/perov_5
"""

from __future__ import annotations

import argparse
import csv
import gzip
from collections import defaultdict
from pathlib import Path

from pymatgen.core import Composition

from kldm_cli.evaluation.combine import load_records


def heats_by_composition(folder: Path) -> dict[str, list[tuple[float, str]]]:
    """Reduced formula → (heat_all, material_id) of every Perov-5 row (train, val, test)."""
    heats: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for split in ("train", "val", "test"):
        with gzip.open(folder / f"{split}.csv.gz", "rt") as handle:
            for row in csv.DictReader(handle):
                formula = Composition(row["formula"]).reduced_formula
                heats[formula].append((float(row["heat_all"]), f"{split}:{row['material_id']}"))
    return heats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/perov_5"))
    args = parser.parse_args()
    heats = heats_by_composition(args.data)
    with gzip.open(args.data / "test.csv.gz", "rt") as handle:
        test = list(csv.DictReader(handle))
    groups: dict[str, list[bool]] = defaultdict(list)
    (record,) = load_records([args.record])
    for target in record["per_target"]:
        row = test[target["index"]]
        siblings = heats[Composition(row["formula"]).reduced_formula]
        first = target["search"]["ranked_match_rank"] == 1
        if len(siblings) == 1:
            groups["composition occurs once"].append(first)
        else:
            lowest = min(siblings)[1] == f"test:{row['material_id']}"
            name = "lowest heat_all of its siblings" if lowest else "a sibling has lower heat_all"
            groups[f"shared, {name}"].append(first)
    for name, firsts in groups.items():
        share = 100 * sum(firsts) / len(firsts)
        print(f"{name}: top-1 {sum(firsts)}/{len(firsts)} ({share:.1f} %)")


if __name__ == "__main__":
    main()

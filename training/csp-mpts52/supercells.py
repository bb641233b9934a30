"""Write the same small crystals as 1x, 2x, 3x and 4x cells, to test CSP at more atoms per cell.

    python training/csp-mpts52/supercells.py ../shared/data/mp_20/test.csv.gz runs/supercells

takes the first 40 rows of 7-10 atoms and writes ``z1.csv.gz`` (as they are), ``z2.csv.gz``
(2x1x1 supercells), ``z3.csv.gz`` (3x1x1) and ``z4.csv.gz`` (2x2x1). A supercell is the same
crystal, so ``kldm evaluate csp`` on ``zN.csv.gz`` asks for that crystal with N formula units per
cell, and the matcher (primitive cells) accepts any sample that is a supercell of it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

from pymatgen.core import Structure

MULTIPLES = {1: (1, 1, 1), 2: (2, 1, 1), 3: (3, 1, 1), 4: (2, 2, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--atoms", default="7-10", help="LO-HI atoms of the crystals taken")
    args = parser.parse_args()
    low, high = (int(n) for n in args.atoms.split("-"))
    csv.field_size_limit(1 << 30)
    picked = []
    with gzip.open(args.data, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            structure = Structure.from_str(row["cif"], fmt="cif")
            if low <= len(structure) <= high:
                picked.append((row["material_id"], structure))
            if len(picked) == args.count:
                break
    args.out.mkdir(parents=True, exist_ok=True)
    for z, scaling in MULTIPLES.items():
        with gzip.open(args.out / f"z{z}.csv.gz", "wt", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["material_id", "cif"])
            writer.writeheader()
            for material_id, structure in picked:
                cell = structure.copy()
                cell.make_supercell(scaling)
                writer.writerow({"material_id": material_id, "cif": cell.to(fmt="cif")})
    print(f"{len(picked)} crystals written 4 times to {args.out}")


if __name__ == "__main__":
    main()

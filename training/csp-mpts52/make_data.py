"""Build the training and selection files of the kldm-csp-mpts52 fine-tuning run.

    python training/csp-mpts52/make_data.py ../shared/data runs/csp-mpts52-data
    python training/csp-mpts52/make_data.py ../shared/data runs/csp-mpts52-data-x4 --repeat-large 4

- selection: the first 500 rows of ``mpts_52/val.csv.gz`` (used to choose checkpoints);
- training: the other 4,500 rows of ``mpts_52/val.csv.gz`` plus ``mp_20/train.csv.gz``, without
  any ``material_id`` of ``mpts_52/test.csv.gz`` or of the selection rows, without duplicate
  ``material_id``s, and without any LiFePO4 structure (the blind check of the release);
- ``mpts_52/test.csv.gz`` is held out entirely;
- ``--repeat-large N`` writes every training row of more than 20 atoms N times (ids suffixed
  ``#2`` ... ``#N``), so that an epoch shows the large cells N times as often.

Prints the row counts; the files are written with columns ``material_id, cif, source``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition

SELECTION_ROWS = 500
BLIND_FORMULA = "LiFePO4"
SMALL_CELL_ATOMS = 20


def cell_composition(cif: str) -> Composition:
    """The cell's composition, read from a CIF's ``_chemical_formula_sum`` line."""
    match = re.search(r"_chemical_formula_sum\s+'?([^'\n]+)'?", cif)
    if match is None:
        raise ValueError("CIF without _chemical_formula_sum")
    return Composition(match.group(1))


def reduced_formula(cif: str) -> str:
    return cell_composition(cif).reduced_formula


def repeat_large(train: pd.DataFrame, times: int) -> pd.DataFrame:
    """``train`` with every row of more than 20 atoms written ``times`` times (unique ids)."""
    large = train[train["cif"].map(lambda cif: cell_composition(cif).num_atoms) > SMALL_CELL_ATOMS]
    copies = [
        large.assign(material_id=large["material_id"].astype(str) + f"#{k}")
        for k in range(2, times + 1)
    ]
    return pd.concat([train, *copies], ignore_index=True)


def main(data_dir: Path, out_dir: Path, times: int = 1) -> None:
    mp20 = pd.read_csv(data_dir / "mp_20/train.csv.gz")
    val = pd.read_csv(data_dir / "mpts_52/val.csv.gz")
    test = pd.read_csv(data_dir / "mpts_52/test.csv.gz")
    selection = val.iloc[:SELECTION_ROWS].assign(source="mpts_52_val")
    val_train = val.iloc[SELECTION_ROWS:].assign(source="mpts_52_val")
    mp20 = mp20.assign(source="mp_20_train:" + mp20["source"].astype(str))
    held_out = set(test["material_id"]) | set(selection["material_id"])
    train = pd.concat([val_train, mp20[["material_id", "cif", "source"]]], ignore_index=True)
    counts = {"candidates": len(train)}
    train = train[~train["material_id"].isin(held_out)]
    counts["after removing test/selection ids"] = len(train)
    train = train.drop_duplicates("material_id")
    counts["after removing duplicate ids"] = len(train)
    formulas = train["cif"].map(reduced_formula)
    train = train[formulas != BLIND_FORMULA]
    counts[f"after removing {BLIND_FORMULA}"] = len(train)
    if times > 1:
        train = repeat_large(train, times)
        counts[f"with the rows over {SMALL_CELL_ATOMS} atoms written {times} times"] = len(train)
    selection = selection[selection["cif"].map(reduced_formula) != BLIND_FORMULA]
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["material_id", "cif", "source"]
    train[columns].to_csv(out_dir / "train.csv.gz", index=False)
    selection[columns].to_csv(out_dir / "select.csv.gz", index=False)
    for name, count in counts.items():
        print(f"training rows {name}: {count}")
    print(f"selection rows: {len(selection)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--repeat-large", type=int, default=1, metavar="N")
    args = parser.parse_args()
    main(args.data_dir, args.out_dir, args.repeat_large)

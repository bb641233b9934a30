"""Where a CSP model succeeds and fails (``kldm evaluate breakdown``): the match rate of one
``kldm evaluate csp`` record split by a property of each target.

Splits:

- ``elements``: number of distinct elements of the target (1, 2, 3, 4, 5+), read from the
  record's reduced formula;
- ``atoms``: atoms in the target's cell (1–4, 5–8, …, 17–20, 21+), read from the test file the
  record was made from (checked by its sha256);
- ``seen``: whether the target's reduced formula occurs in a reference file (the training data):
  a test composition with a polymorph in the training data is a different problem from an unseen
  composition.

Each group reports its targets, matches, match rate with its binomial standard error
``sqrt(p (1 − p) / n)`` and the RMSE averaged over its matched targets, so that a group's rate is
read with the noise that a few dozen targets carry.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kldm_cli.evaluation.combine import check_csp

#: The splits :func:`breakdown_csp_record` knows, in the order they are reported, with their
#: titles.
SPLITS = {
    "elements": "number of elements",
    "atoms": "atoms in the cell",
    "seen": "composition in the reference",
}

#: Upper edges of the atom-count groups; larger cells fall in the last, open group.
ATOM_EDGES = (4, 8, 12, 16, 20)

#: Element counts from this one up share a group.
MAX_ELEMENT_GROUP = 5


def _composition_property(formula: str, name: str) -> Any:
    """``Composition(formula).<name>``, without pymatgen's warnings about missing
    electronegativities (He, Ar, …), which it raises while ordering the elements."""
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(Composition(formula), name)


def element_count(formula: str) -> int:
    """Number of distinct elements of a formula (``"LiFePO4"`` → 4)."""
    return len(_composition_property(formula, "elements"))


def reduced_formula(formula: str) -> str:
    """pymatgen's reduced formula, so that ``"Na2Cl2"`` and ``"NaCl"`` compare equal."""
    return _composition_property(formula, "reduced_formula")


#: A target's group: its position in the report and its label.
Group = tuple[int, str]


def element_group(formula: str) -> Group:
    count = min(element_count(formula), MAX_ELEMENT_GROUP)
    if count == MAX_ELEMENT_GROUP:
        return count, f"{MAX_ELEMENT_GROUP}+ elements"
    return count, f"{count} element" + ("s" if count > 1 else "")


def atom_group(num_atoms: int) -> Group:
    low = 1
    for position, edge in enumerate(ATOM_EDGES):
        if num_atoms <= edge:
            return position, f"{low}–{edge} atoms"
        low = edge + 1
    return len(ATOM_EDGES), f"{low}+ atoms"


def group_summary(name: str, entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Targets, matches, match rate, its standard error and mean RMSE of one group."""
    n = len(entries)
    matched = [e for e in entries if e["matched"]]
    rate = len(matched) / n
    rmses = [e["rmse"] for e in matched if e.get("rmse") is not None]
    return {
        "group": name,
        "num_targets": n,
        "num_matched": len(matched),
        "match_rate": rate,
        "stderr": math.sqrt(rate * (1 - rate) / n),
        "rmse": sum(rmses) / len(rmses) if rmses else None,
    }


def split_targets(
    per_target: Sequence[dict[str, Any]], group: Callable[[dict[str, Any]], Group]
) -> list[dict[str, Any]]:
    """:func:`group_summary` of each non-empty group of the targets, in report order."""
    groups: dict[Group, list[dict[str, Any]]] = {}
    for entry in per_target:
        groups.setdefault(group(entry), []).append(entry)
    return [group_summary(label, groups[(position, label)]) for position, label in sorted(groups)]


def atoms_by_material_id(dataset: Any, record: dict[str, Any], data_name: str) -> dict[str, int]:
    """material_id → atoms in the cell, for the record's targets, from the test ``dataset`` the
    record was made from. Raises ``ValueError`` when the file is not that test file."""
    expected = record.get("inputs", {}).get("data", {}).get("sha256")
    if expected is not None and dataset.content_hash != expected:
        raise ValueError(
            f"{data_name} is not the test file of this record (sha256 {dataset.content_hash[:12]}…,"
            f" the record names {expected[:12]}… for {record['inputs']['data'].get('path')})"
        )
    atoms = {r.material_id: r.num_atoms for r in dataset.records}
    missing = [e["material_id"] for e in record["per_target"] if e["material_id"] not in atoms]
    if missing:
        raise ValueError(f"{data_name} holds no structure {missing[0]!r} of the record")
    return atoms


def breakdown_csp_record(
    record: dict[str, Any],
    *,
    name: str = "record",
    data: Any | None = None,
    data_name: str = "--data",
    reference_formulas: set[str] | None = None,
) -> dict[str, Any]:
    """The match rate of a CSP ``record`` split by elements, and by atoms (with the test
    ``data`` set it was made from) and by seen / unseen composition (with the reduced formulas
    of a reference set). Raises ``ValueError`` naming the problem for anything but a CSP record,
    or a ``data`` set that is not the record's."""
    check_csp(record, name)
    per_target = record["per_target"]
    if not per_target:
        raise ValueError(f"{name} has no target")
    splits: dict[str, list[dict[str, Any]]] = {
        "elements": split_targets(per_target, lambda e: element_group(e["formula"]))
    }
    if data is not None:
        atoms = atoms_by_material_id(data, record, data_name)
        splits["atoms"] = split_targets(per_target, lambda e: atom_group(atoms[e["material_id"]]))
    if reference_formulas is not None:
        seen = {reduced_formula(f) for f in reference_formulas}

        def seen_group(entry: dict[str, Any]) -> Group:
            if reduced_formula(entry["formula"]) in seen:
                return 0, "in the reference"
            return 1, "not in the reference"

        splits["seen"] = split_targets(per_target, seen_group)
    metrics = record["metrics"]
    return {
        "task": "csp",
        "name": name,
        "k": metrics.get("k"),
        "num_targets": len(per_target),
        "match_rate": sum(e["matched"] for e in per_target) / len(per_target),
        "splits": splits,
    }


def reference_formulas_of(path: str | Path) -> set[str]:
    """Reduced formulas of a dataset file (any format :func:`load_dataset` reads)."""
    from kldm_cli.data.readers import load_dataset

    return {record.formula for record in load_dataset(path).records}

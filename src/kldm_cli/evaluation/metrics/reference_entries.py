"""A user-supplied DFT reference for stability and S.U.N.: ``--reference-entries``.

Formats (``.gz`` optional, recognised by the name):

- **JSON** (``.json``): pymatgen ``ComputedStructureEntry`` dicts (``entry.as_dict()``) as

  - a list of entries (``monty.serialization.dumpfn(entries, ...)``, what
    ``MPRester.get_entries`` gives when saved);
  - ``{"data": [...]}`` (a Materials Project API response);
  - ``{"entry": {id: entry, ...}}`` or ``{"entries": [...]}`` (matbench-discovery's MP entries
    file, a pandas frame written column-wise, and similar);
  - ``{id: entry, ...}`` or one entry.

  An entry without a structure (a plain ``ComputedEntry``) is refused: novelty needs it.
- **CSV** (``.csv``): CDVAE-style, a ``cif`` column plus an energy column, the first present of
  :data:`CSV_ENERGY_COLUMNS`: ``corrected_energy_per_atom`` or ``energy_per_atom`` (eV/atom), or
  ``corrected_energy`` or ``energy`` (eV, total for the cell written in the CIF). A formation
  energy (``formation_energy_per_atom``, what MP-20's CSVs hold) is refused: it cannot share a
  hull with total energies.

Energy correction (:func:`correct_entries`): an entry whose ``parameters["run_type"]`` is set (as
in every Materials Project entry) gets the Materials Project 2020 corrections recomputed from its
uncorrected energy (``MaterialsProject2020Compatibility(check_potcar=False)``, old adjustments
dropped); one that MP2020 refuses (e.g. an r2SCAN run) is left out and counted. An entry without
``run_type`` (every CSV row, a JSON entry without parameters) keeps its energy *as given*
(``entry.energy``, with any adjustments already stored in it): it must already be on the MP2020
scale, as the Materials Project's ``energy_per_atom`` is. Samples are always put on that scale
(:func:`sample_entry`): CHGNet predicts uncorrected MP GGA/GGA+U energies, so each sample becomes
a ``GGA`` or ``GGA+U`` entry (U for oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W, as in
MP) and gets the same MP2020 corrections.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

#: Energy columns of a reference CSV, in order of preference: (name, per atom?).
CSV_ENERGY_COLUMNS: tuple[tuple[str, bool], ...] = (
    ("corrected_energy_per_atom", True),
    ("energy_per_atom", True),
    ("corrected_energy", False),
    ("energy", False),
)

#: How the record names the correction scheme.
CORRECTION_SCHEME = (
    "MaterialsProject2020Compatibility (check_potcar=False) recomputed for entries with "
    "parameters.run_type; energies of entries without it taken as given; samples: CHGNet "
    "energy as a GGA/GGA+U entry with MP2020 corrections"
)


@dataclass
class ReferenceEntries:
    """Reference entries with energies on the MP2020 scale.

    ``entries[i]`` is a ``ComputedStructureEntry``; ``num_read`` counts the entries in the file,
    ``num_mp2020`` those corrected with MP2020, ``num_as_given`` those taken as given and
    ``num_incompatible`` those MP2020 refused (left out)."""

    path: str
    sha256: str
    file_format: str
    entries: list[Any]
    num_read: int
    num_mp2020: int
    num_as_given: int
    num_incompatible: int

    @property
    def structures(self) -> list[Structure]:
        """The entries' structures without oxidation states (samples carry none)."""
        structures = []
        for entry in self.entries:
            structure = entry.structure
            if any(hasattr(sp, "oxi_state") for sp in structure.composition):
                structure = structure.copy()
                structure.remove_oxidation_states()
            structures.append(structure)
        return structures

    def info(self) -> dict[str, Any]:
        """What the record says about the reference."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "format": self.file_format,
            "num_entries": self.num_read,
            "num_used": len(self.entries),
            "num_mp2020_corrected": self.num_mp2020,
            "num_energy_as_given": self.num_as_given,
            "num_incompatible": self.num_incompatible,
            "correction": CORRECTION_SCHEME,
        }


def _open_text(path: Path) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read()


def _entry_dicts(data: Any) -> list[Any]:
    """The entry dicts of any of the JSON shapes in the module doc."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"expected a list or an object of entries, got {type(data).__name__}")
    if "structure" in data and "energy" in data:
        return [data]  # one entry
    for key in ("data", "entries", "entry"):
        if key in data:
            inner = data[key]
            return list(inner.values()) if isinstance(inner, dict) else list(inner)
    if data and all(isinstance(v, dict) and "structure" in v for v in data.values()):
        return list(data.values())
    raise ValueError(
        "no entries found: expected a list of ComputedStructureEntry dicts, or an object with "
        f"'data', 'entries' or 'entry' (got keys {sorted(data)[:5]})"
    )


def read_entries_json(path: str | Path) -> list[Any]:
    """``ComputedStructureEntry`` objects of a JSON file (see the module doc)."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    path = Path(path)
    try:
        data = json.loads(_open_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise ValueError(f"{path} is not a readable JSON file: {error}") from error
    entries = []
    for index, item in enumerate(_entry_dicts(data)):
        if not isinstance(item, dict) or "structure" not in item or "energy" not in item:
            raise ValueError(
                f"{path}: entry {index} is not a ComputedStructureEntry (needs 'structure' and "
                "'energy'); novelty needs every reference structure"
            )
        try:
            entries.append(ComputedStructureEntry.from_dict(item))
        except Exception as error:  # noqa: BLE001 - any malformed entry: a clear error
            raise ValueError(f"{path}: entry {index} cannot be read: {error}") from error
    return entries


def read_entries_csv(path: str | Path) -> list[Any]:
    """``ComputedStructureEntry`` objects from a CDVAE-style CSV with an energy column."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    from kldm_cli.data.readers import load_dataset

    dataset = load_dataset(path, niggli=False, use_cache=False)
    if dataset.skipped:
        raise ValueError(f"{path}: {len(dataset.skipped)} row(s) have no readable structure")
    columns = set(dataset.records[0].metadata) if dataset.records else set()
    found = next(((name, atom) for name, atom in CSV_ENERGY_COLUMNS if name in columns), None)
    if found is None:
        names = ", ".join(name for name, _ in CSV_ENERGY_COLUMNS)
        hint = (
            " (formation_energy_per_atom is a formation energy and cannot share a hull with "
            "total energies)"
            if "formation_energy_per_atom" in columns
            else ""
        )
        raise ValueError(f"{path} has no energy column; expected one of {names}{hint}")
    name, per_atom = found
    entries = []
    for index, record in enumerate(dataset.records):
        value = record.metadata.get(name)
        if not isinstance(value, int | float):
            raise ValueError(f"{path}: row {index} has no number in column {name!r}: {value!r}")
        structure = record.to_structure()
        energy = float(value) * len(structure) if per_atom else float(value)
        entries.append(
            ComputedStructureEntry(structure, energy, entry_id=record.material_id or f"row-{index}")
        )
    return entries


def correct_entries(entries: Iterable[Any]) -> tuple[list[Any], int, int, int]:
    """MP2020-correct the entries that carry ``run_type`` (see the module doc). Returns (kept
    entries, number MP2020-corrected, number taken as given, number refused by MP2020)."""
    from pymatgen.entries.compatibility import (
        CompatibilityError,
        MaterialsProject2020Compatibility,
    )

    compatibility = MaterialsProject2020Compatibility(check_potcar=False)
    kept, num_mp2020, num_as_given, num_incompatible = [], 0, 0, 0
    for entry in entries:
        if not (entry.parameters or {}).get("run_type"):
            kept.append(entry)
            num_as_given += 1
            continue
        try:
            entry.energy_adjustments = compatibility.get_adjustments(entry)
        except CompatibilityError:
            num_incompatible += 1
            continue
        kept.append(entry)
        num_mp2020 += 1
    return kept, num_mp2020, num_as_given, num_incompatible


def load_reference_entries(path: str | Path) -> ReferenceEntries:
    """Read and correct a reference entries file (JSON or CSV, optionally gzipped)."""
    from kldm_cli.data.readers import file_sha256

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"reference entries file not found: {path}")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".json"):
        file_format, entries = "json", read_entries_json(path)
    elif name.endswith(".csv"):
        file_format, entries = "csv", read_entries_csv(path)
    else:
        raise ValueError(f"{path}: expected a .json or .csv file (optionally .gz)")
    if not entries:
        raise ValueError(f"{path} holds no entries")
    kept, num_mp2020, num_as_given, num_incompatible = correct_entries(entries)
    if not kept:
        raise ValueError(f"{path}: MP2020 refused all {len(entries)} entries")
    return ReferenceEntries(
        str(path), file_sha256(path), file_format, kept, len(entries), num_mp2020,
        num_as_given, num_incompatible,
    )  # fmt: skip


def sample_entry(structure: Structure, energy_per_atom: float) -> Any:
    """A CHGNet energy (eV/atom) as a ``ComputedStructureEntry`` with MP2020 corrections (GGA+U
    for oxides and fluorides of MP's U elements, GGA otherwise)."""
    from pymatgen.entries.compatibility import (
        CompatibilityError,
        MaterialsProject2020Compatibility,
    )
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    compatibility = MaterialsProject2020Compatibility(check_potcar=False)
    symbols = {element.symbol for element in structure.composition.elements}
    hubbards: dict[str, float] = {}
    for anion in ("O", "F"):  # MP's rule: U for the metals of an oxide (or else a fluoride)
        if anion in symbols and not hubbards:
            hubbards = {s: u for s, u in compatibility.u_settings[anion].items() if s in symbols}
    parameters: dict[str, Any] = {"run_type": "GGA+U" if hubbards else "GGA"}
    if hubbards:
        parameters["hubbards"] = hubbards
    energy = energy_per_atom * len(structure)
    entry = ComputedStructureEntry(structure, energy, parameters=parameters)
    try:
        with warnings.catch_warnings():  # oxidation states of a made-up crystal: a guess
            warnings.simplefilter("ignore", UserWarning)
            entry.energy_adjustments = compatibility.get_adjustments(entry)
    except CompatibilityError:
        pass  # no correction applies; the uncorrected energy stands
    return entry


class EntriesHull:
    """E_hull of samples against reference entries, one ``PhaseDiagram`` per chemical system
    (built from the entries of every subsystem, found by enumerating subsets)."""

    def __init__(self, entries: Sequence[Any]) -> None:
        self._by_system: dict[frozenset[str], list[Any]] = defaultdict(list)
        for entry in entries:
            system = frozenset(e.symbol for e in entry.composition.elements)
            self._by_system[system].append(entry)
        self.elements = {next(iter(s)) for s in self._by_system if len(s) == 1}
        self._diagrams: dict[frozenset[str], Any] = {}

    def diagram(self, system: frozenset[str]) -> Any:
        """The phase diagram of ``system``; None if one of its elements has no entry."""
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        if not system <= self.elements:
            return None
        if system not in self._diagrams:
            members = sorted(system)
            entries = [
                entry
                for size in range(1, len(members) + 1)
                for subset in combinations(members, size)
                for entry in self._by_system.get(frozenset(subset), [])
            ]
            self._diagrams[system] = PhaseDiagram(entries)
        return self._diagrams[system]

    def e_above_hull(self, entry: Any) -> float | None:
        """E_hull (eV/atom, negative below the hull) of ``entry``; None without a hull."""
        diagram = self.diagram(frozenset(e.symbol for e in entry.composition.elements))
        if diagram is None:
            return None
        return float(diagram.get_e_above_hull(entry, allow_negative=True))


def energies_above_entries_hull(
    structures: Sequence[Structure],
    energies_per_atom: Sequence[float | None],
    reference: ReferenceEntries,
) -> list[float | None]:
    """E_hull (eV/atom) of each structure with the given CHGNet energy (eV/atom), MP2020
    corrected, against the reference entries; None where the energy is None or an element of
    the structure has no elemental entry."""
    if len(structures) != len(energies_per_atom):
        raise ValueError(f"{len(structures)} structures but {len(energies_per_atom)} energies")
    hull = EntriesHull(reference.entries)
    return [
        None if energy is None else hull.e_above_hull(sample_entry(structure, energy))
        for structure, energy in zip(structures, energies_per_atom, strict=True)
    ]

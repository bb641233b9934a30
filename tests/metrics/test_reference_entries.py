"""Reference entries (``--reference-entries``), the proxy hull's name and shares, and
disorder-aware novelty, with a cheap energy model in place of CHGNet."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
from monty.json import MontyEncoder
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from kldm_cli.evaluation.dng_run import evaluate_dng
from kldm_cli.evaluation.metrics.dng import (
    DNG_MATCHER_SETTINGS,
    matches_any,
    matches_any_disorder_aware,
)
from kldm_cli.evaluation.metrics.reference_entries import (
    energies_above_entries_hull,
    load_reference_entries,
)
from kldm_cli.evaluation.relax import RelaxResult

from .conftest import cscl_nacl, rocksalt_nacl
from .helpers import write_cifs, write_csv

#: MP2020's anion correction for Cl (eV per Cl atom), from its published table.
MP2020_CL = -0.614


def unary(symbol: str) -> Structure:
    return Structure(Lattice.cubic(3.0), [symbol], [[0, 0, 0]])


def na2cl() -> Structure:
    return Structure(
        Lattice.cubic(5.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5]]
    )


def rocksalt_kcl() -> Structure:
    kcl = rocksalt_nacl(6.3)
    kcl.replace_species({"Na": "K"})
    return kcl


def entry(structure: Structure, energy_per_atom: float, **parameters: str) -> dict:
    return ComputedStructureEntry(
        structure, energy_per_atom * len(structure), parameters=parameters
    ).as_dict()


def entries_file(tmp_path: Path, shape: str = "list", gz: bool = False) -> Path:
    """Na and Cl at 0 eV/atom and rocksalt NaCl at -1 eV/atom (energies as given: no
    run_type), and CsCl-type NaCl as an MP-style GGA run at -0.5 eV/atom uncorrected."""
    entries = [
        entry(unary("Na"), 0.0),
        entry(unary("Cl"), 0.0),
        entry(rocksalt_nacl(), -1.0),
        entry(cscl_nacl(), -0.5, run_type="GGA"),
    ]
    data = {
        "list": entries,
        "mp-api": {"data": entries},
        "matbench": {"entry": {f"mp-{i}": e for i, e in enumerate(entries)}},
    }[shape]
    text = json.dumps(data, cls=MontyEncoder)
    path = tmp_path / f"entries-{shape}.json{'.gz' if gz else ''}"
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(("shape", "gz"), [("list", False), ("mp-api", True), ("matbench", True)])
def test_entries_json_shapes_and_mp2020(tmp_path: Path, shape: str, gz: bool) -> None:
    reference = load_reference_entries(entries_file(tmp_path, shape, gz))
    assert reference.num_read == len(reference.entries) == 4
    assert (reference.num_as_given, reference.num_mp2020, reference.num_incompatible) == (3, 1, 0)
    energies = sorted(e.energy_per_atom for e in reference.entries)
    # CsCl NaCl: -0.5 + MP2020's Cl correction shared over 2 atoms
    assert energies == pytest.approx([-1.0, -0.5 + MP2020_CL / 2, 0.0, 0.0])
    assert len(reference.sha256) == 64
    assert reference.info()["num_entries"] == 4


def test_an_entry_mp2020_refuses_is_left_out_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "entries.json"
    data = [entry(unary("Na"), 0.0), entry(unary("Cl"), 0.0, run_type="R2SCAN")]
    path.write_text(json.dumps(data, cls=MontyEncoder))
    reference = load_reference_entries(path)
    assert (len(reference.entries), reference.num_incompatible) == (1, 1)


def test_entries_csv_per_atom_and_total(tmp_path: Path) -> None:
    structures = [unary("Na"), unary("Cl"), rocksalt_nacl()]
    for column, values in (("energy_per_atom", [0, 0, -1.0]), ("energy", [0, 0, -2.0])):
        path = write_csv(tmp_path / f"{column}.csv", structures)
        rows = list(csv.reader(path.open()))
        rows[0].append(column)
        for row, value in zip(rows[1:], values, strict=True):
            row.append(str(value))
        csv.writer(path.open("w", newline="")).writerows(rows)
        reference = load_reference_entries(path)
        assert reference.file_format == "csv"
        assert [e.energy_per_atom for e in reference.entries] == pytest.approx([0, 0, -1.0])


def test_entries_csv_with_formation_energy_only_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "formation.csv", [unary("Na")])
    rows = list(csv.reader(path.open()))
    rows[0].append("formation_energy_per_atom")
    rows[1].append("0.0")
    csv.writer(path.open("w", newline="")).writerows(rows)
    with pytest.raises(ValueError, match="formation energy"):
        load_reference_entries(path)
    with pytest.raises(ValueError, match="not found"):
        load_reference_entries(tmp_path / "missing.json")
    (tmp_path / "entries.txt").write_text("[]")
    with pytest.raises(ValueError, match=".json or .csv"):
        load_reference_entries(tmp_path / "entries.txt")


def test_energies_above_entries_hull_known_values(tmp_path: Path) -> None:
    reference = load_reference_entries(entries_file(tmp_path))
    samples = [cscl_nacl(), na2cl(), rocksalt_kcl(), rocksalt_nacl()]
    e_hull = energies_above_entries_hull(samples, [-0.6, -0.5, -3.0, None], reference)
    # NaCl: -0.6 - 0.307 (MP2020 Cl) above -1; Na2Cl: hull at x_Cl = 1/3 is -2/3; no elemental K
    assert e_hull[0] == pytest.approx(-0.6 + MP2020_CL / 2 + 1.0)
    assert e_hull[1] == pytest.approx(-0.5 + MP2020_CL / 3 + 2 / 3)
    assert e_hull[2:] == [None, None]


def cubic_fcc_cuni(layers: str) -> Structure:
    """A 1x1x2 supercell of the conventional fcc cell (8 atoms), (001) layers of Cu or Ni."""
    coords, species = [], []
    for layer, symbol in enumerate(layers):
        z = layer / 4
        offsets = [(0, 0), (0.5, 0.5)] if layer % 2 == 0 else [(0.5, 0), (0, 0.5)]
        for x, y in offsets:
            coords.append([x, y, z])
            species.append({"C": "Cu", "N": "Ni"}[symbol])
    return Structure(Lattice.tetragonal(3.6, 7.2), species, coords)


def test_disorder_aware_matcher_ignores_the_ordering_of_substitutable_elements() -> None:
    layered, paired = cubic_fcc_cuni("CNCN"), cubic_fcc_cuni("CCNN")
    assert not matches_any(paired, [layered], DNG_MATCHER_SETTINGS)
    assert matches_any_disorder_aware(paired, [layered], DNG_MATCHER_SETTINGS)
    # Na and K may substitute, but an ordered reference of another formula never matches
    assert not matches_any_disorder_aware(rocksalt_nacl(), [rocksalt_kcl()], DNG_MATCHER_SETTINGS)


ENERGIES = {"NaCl": -1.25, "Na2Cl": -0.5, "KCl": -3.0}


@pytest.fixture
def cheap_energies(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """CHGNet replaced by a table of energies per reduced formula (eV/atom); "relaxation"
    keeps every structure as it is. Proxy-hull structures get their energy by structure:
    rocksalt NaCl -1.0, CsCl-type NaCl -0.8."""

    def energy(structure: Structure) -> float:
        if len(structure.composition.elements) == 1:
            return 0.0
        if structure.composition.reduced_formula == "NaCl" and structure.volume > 40:
            return -1.0  # rocksalt (the CsCl cell is 3.3³ ≈ 36 Å³ for 2 atoms, rocksalt 45)
        return ENERGIES[structure.composition.reduced_formula]

    def relax(structures, *, steps=0, fmax=0.1, device="cpu", model=None):
        return [
            RelaxResult(i, s, s, energy(s), energy(s), 0.0, 0.0, 0, True)
            for i, s in enumerate(structures)
        ]

    def single_points(structures, *, device="cpu", model=None):
        return [-0.8 if s.volume < 40 and len(s) == 2 and "Na" in s.symbol_set
                else energy(s) for s in structures]  # fmt: skip

    monkeypatch.setattr("kldm_cli.evaluation.relax.load_chgnet", lambda device="cpu": None)
    monkeypatch.setattr("kldm_cli.evaluation.relax.relax_structures", relax)
    monkeypatch.setattr("kldm_cli.evaluation.relax.predict_energies", single_points)
    return ENERGIES


def test_evaluate_dng_with_reference_entries(tmp_path: Path, cheap_energies) -> None:
    samples = write_cifs(tmp_path / "samples", [cscl_nacl(), na2cl(), rocksalt_kcl()])
    train = write_csv(tmp_path / "train.csv", [unary("Na"), unary("Cl"), rocksalt_nacl()])
    entries = entries_file(tmp_path, "matbench", gz=True)
    record = evaluate_dng(
        samples, train, reference_entries=entries, elemental_crystals=False, workers=0,
        threads=1, out=tmp_path / "dng.json",
    )  # fmt: skip
    cscl, na2cl_sample, kcl = record["per_sample"]
    assert cscl["novel"] and not cscl["novel_vs_known"]  # the CsCl cell is an entry
    assert cscl["e_above_hull"] == pytest.approx(-1.25 + MP2020_CL / 2 + 1.0)
    assert cscl["stable"] and not cscl["sun"]
    assert na2cl_sample["e_above_hull"] == pytest.approx(-0.5 + MP2020_CL / 3 + 2 / 3)
    assert na2cl_sample["stable"] and na2cl_sample["sun"]
    assert kcl["e_above_hull"] is None and not kcl["stable"]
    metrics = record["metrics"]
    assert metrics["hull"] == f"reference entries: 4 of {entries.name}"
    assert metrics["stable_rate"] == pytest.approx(2 / 3)
    assert metrics["sun_rate"] == pytest.approx(1 / 3)
    assert metrics["no_hull_rate"] == pytest.approx(1 / 3)
    assert metrics["below_hull_rate"] == pytest.approx(2 / 3)  # CsCl at -0.56, Na2Cl at -0.04
    assert metrics["far_below_hull_rate"] == pytest.approx(1 / 3)
    (info,) = record["inputs"]["hull_reference"]["files"]
    assert (info["path"], info["num_entries"]) == (str(entries), 4)
    assert info["sha256"] == load_reference_entries(entries).sha256
    assert "MaterialsProject2020Compatibility" in info["correction"]
    assert json.loads((tmp_path / "dng.json").read_text())["metrics"]["hull"] == metrics["hull"]


def test_reference_entries_need_stability(tmp_path: Path) -> None:
    samples = write_cifs(tmp_path / "samples", [cscl_nacl()])
    train = write_csv(tmp_path / "train.csv", [rocksalt_nacl()])
    with pytest.raises(ValueError, match="no-stability"):
        evaluate_dng(samples, train, stability=False, reference_entries=entries_file(tmp_path))


def test_proxy_hull_is_named_and_novelty_covers_every_data_file(
    tmp_path: Path, cheap_energies
) -> None:
    """The CsCl-type NaCl sample is in the hull file but not in the training file: novel against
    the training file, not novel against the known structures. It lands 0.25 eV/atom below the
    proxy hull; KCl has no hull (no elemental K, ASE crystals off)."""
    samples = write_cifs(tmp_path / "samples", [cscl_nacl(), rocksalt_kcl()])
    train = write_csv(tmp_path / "train.csv", [unary("Na"), unary("Cl"), rocksalt_nacl()])
    extra = write_csv(tmp_path / "extra.csv", [cscl_nacl()], prefix="extra")
    record = evaluate_dng(
        samples, train, hull_reference=[train, extra], elemental_crystals=False, workers=0,
        threads=1,
    )  # fmt: skip
    cscl, kcl = record["per_sample"]
    assert cscl["novel"] and not cscl["novel_vs_known"]
    assert cscl["e_above_hull"] == pytest.approx(-0.25)
    metrics = record["metrics"]
    assert metrics["hull"] == "proxy hull: 4 structures of the bundled data files"
    assert record["inputs"]["hull_reference"]["kind"] == "proxy"
    assert (metrics["below_hull_rate"], metrics["far_below_hull_rate"]) == (0.5, 0.5)
    assert metrics["no_hull_rate"] == 0.5
    assert (metrics["stable_rate"], metrics["sun_rate"]) == (0.5, 0.0)
    assert metrics["novelty_vs_known"] == 0.5

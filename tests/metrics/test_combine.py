"""Stability measured in chunks (``evaluate_dng(start=, limit=)``) and merged with
``combine_dng_records`` / ``kldm evaluate combine`` equals stability measured in one run."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.evaluation.combine import combine_dng_records
from kldm_cli.evaluation.dng_run import evaluate_dng
from kldm_cli.evaluation.records import write_record

from .conftest import displaced, low_symmetry_crystal, rocksalt_nacl
from .helpers import write_cifs, write_csv

runner = CliRunner()


def two_nacl_and_kcl(tmp_path: Path) -> tuple[Path, Path]:
    """Samples: two slightly different displaced NaCl cells (duplicates under the matcher) and
    rocksalt KCl. Reference: bcc Na, a Cl cell and an unrelated crystal, so the NaCl samples are
    novel and below the Na–Cl hull, and K has no elemental reference."""
    kcl = rocksalt_nacl(6.3)
    kcl.replace_species({"Na": "K"})
    samples = [displaced(rocksalt_nacl(), 0.05, seed=0), displaced(rocksalt_nacl(), 0.05, seed=1)]
    sodium = Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    chlorine = Structure(Lattice.cubic(3.0), ["Cl"], [[0, 0, 0]])
    return (
        write_cifs(tmp_path / "samples", [*samples, kcl]),
        write_csv(tmp_path / "train.csv", [sodium, chlorine, low_symmetry_crystal()]),
    )


def test_chunks_combine_to_the_whole_run(
    tmp_path: Path, chgnet_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kldm_cli.evaluation.relax.load_chgnet", lambda device="cpu": chgnet_model)
    samples, reference = two_nacl_and_kcl(tmp_path)
    options = dict(relax_steps=3, elemental_crystals=False, workers=0)
    whole = evaluate_dng(samples, reference, **options)
    base = evaluate_dng(samples, reference, stability=False, workers=0)
    first = evaluate_dng(samples, reference, limit=1, **options)
    rest = evaluate_dng(samples, reference, start=1, **options)
    assert [e["index"] for e in rest["per_sample"]] == [1, 2]
    assert rest["settings"]["start"] == 1
    # inside its chunk the second NaCl is unique, so the chunk calls it S.U.N.; it is not
    assert rest["per_sample"][0]["sun"] and not whole["per_sample"][1]["sun"]

    combined = combine_dng_records(base, [rest, first])

    for merged, direct in zip(combined["per_sample"], whole["per_sample"], strict=True):
        assert merged["material_id"] == direct["material_id"]
        assert (merged["e_above_hull"] is None) == (direct["e_above_hull"] is None)
        if direct["e_above_hull"] is not None:
            assert merged["e_above_hull"] == pytest.approx(direct["e_above_hull"], abs=1e-4)
        assert (merged["stable"], merged["sun"]) == (direct["stable"], direct["sun"])
    for key in ("stable_rate", "sun_rate", "num_hull_unknown", "num_relax_failed"):
        assert combined["metrics"][key] == whole["metrics"][key], key
    assert combined["metrics"]["num_stability_samples"] == 3
    assert combined["metrics"]["sun_rate"] == pytest.approx(1 / 3)
    assert combined["metrics"]["cov_recall"] == base["metrics"]["cov_recall"]
    assert combined["settings"]["relax_steps"] == 3
    assert len(combined["inputs"]["stability_records"]) == 2
    # Na and Cl have a reference in both chunks, K in neither
    assert combined["inputs"]["hull_reference"]["elements_with_reference"] == ["Cl", "Na"]


def fake_record(formulas: list[str], e_hull: list[float | None] | None = None) -> dict:
    """A DNG record of samples ``s0, s1, ...``; with ``e_hull`` a stability record."""
    per_sample = [
        {"index": i, "material_id": f"s{i}", "formula": formula, "structurally_valid": True,
         "unique": True, "novel": True}
        for i, formula in enumerate(formulas)
    ]  # fmt: skip
    settings = {"stability": e_hull is not None, "samples_metadata": {"seed": 0}}
    inputs: dict = {"samples": {"path": "samples", "sha256": "x"}}
    metrics: dict = {"num_samples": len(formulas), "validity": 1.0}
    if e_hull is not None:
        settings.update(relax_steps=500, reference_relax_steps=0, elemental_crystals=True, fmax=0.1)
        inputs["hull_reference"] = {"files": [{"path": "train.csv", "sha256": "abc"}]}
        metrics["stability_threshold"] = 0.1
        for entry, e in zip(per_sample, e_hull, strict=True):
            entry.update(energy_per_atom=None if e is None else -3.0, e_above_hull=e)
    return {"task": "dng", "metrics": metrics, "settings": settings, "inputs": inputs,
            "per_sample": per_sample}  # fmt: skip


def chunk(record: dict, start: int, stop: int) -> dict:
    part = copy.deepcopy(record)
    part["per_sample"] = part["per_sample"][start:stop]
    return part


def test_hull_elements_are_the_union_of_the_chunks() -> None:
    base = fake_record(["NaCl", "KBr"])
    measured = fake_record(["NaCl", "KBr"], [0.0, 0.0])
    first, second = chunk(measured, 0, 1), chunk(measured, 1, 2)
    first["inputs"]["hull_reference"].update(
        elements_with_reference=["Cl", "Na"], elemental_crystals=["Na"], num_structures_evaluated=3
    )
    second["inputs"]["hull_reference"].update(
        elements_with_reference=["Br", "K"], elemental_crystals=["K"], num_structures_evaluated=4
    )
    hull = combine_dng_records(base, [first, second])["inputs"]["hull_reference"]
    assert hull["elements_with_reference"] == ["Br", "Cl", "K", "Na"]
    assert hull["elemental_crystals"] == ["K", "Na"]
    assert hull["num_structures_evaluated"] == 7


def test_unmeasured_samples_are_left_out_and_unknown_is_not_stable() -> None:
    base = fake_record(["NaCl", "KCl", "LiF", "MgO"])
    measured = chunk(fake_record(["NaCl", "KCl", "LiF", "MgO"], [0.05, None, 0.3, -0.1]), 0, 3)
    combined = combine_dng_records(base, [measured])
    metrics = combined["metrics"]
    assert metrics["num_stability_samples"] == 3
    assert metrics["stable_rate"] == pytest.approx(1 / 3)  # 0.05 stable, None and 0.3 not
    assert metrics["num_hull_unknown"] == 1
    assert metrics["mean_e_above_hull"] == pytest.approx(0.175)
    assert "e_above_hull" not in combined["per_sample"][3]
    assert combined["settings"]["stability_samples"].startswith("3 of 4 samples")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda part: part["per_sample"][0].update(formula="LiF"), "not the same samples"),
        (lambda part: part["per_sample"][0].update(material_id="other"), "not in base"),
        (lambda part: part["settings"].update(relax_steps=10), "relax_steps = 10"),
        (lambda part: part["settings"].update(stability=False), "no stability"),
        (lambda part: part["settings"].update(samples_metadata={"seed": 1}), "made with"),
        (lambda part: part.update(task="csp"), "not a `kldm evaluate dng` record"),
        (
            lambda part: part["inputs"]["hull_reference"]["files"][0].update(sha256="other"),
            "other files",
        ),
    ],
)
def test_a_part_that_does_not_fit_is_refused(change, message: str) -> None:
    base = fake_record(["NaCl", "KCl"])
    good = chunk(fake_record(["NaCl", "KCl"], [0.0, 0.0]), 0, 1)
    bad = chunk(fake_record(["NaCl", "KCl"], [0.0, 0.0]), 1, 2)
    change(bad)
    with pytest.raises(ValueError, match=message):
        combine_dng_records(base, [good, bad], part_names=["good.json", "bad.json"])


def test_a_sample_measured_twice_is_refused() -> None:
    base = fake_record(["NaCl", "KCl"])
    measured = fake_record(["NaCl", "KCl"], [0.0, 0.0])
    with pytest.raises(ValueError, match="'s1' is in both a.json and b.json"):
        combine_dng_records(
            base, [measured, chunk(measured, 1, 2)], part_names=["a.json", "b.json"]
        )


def test_combine_command(tmp_path: Path) -> None:
    base = write_record(fake_record(["NaCl", "KCl"]), tmp_path / "base.json")
    measured = fake_record(["NaCl", "KCl"], [0.02, 0.5])
    parts = [write_record(chunk(measured, i, i + 1), tmp_path / f"part{i}.json") for i in (0, 1)]
    out = tmp_path / "all.json"
    args = ["evaluate", "combine", *map(str, parts), "--base", str(base), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "50.00 %" in result.output
    record = json.loads(out.read_text())
    assert [e["stable"] for e in record["per_sample"]] == [True, False]
    assert record["combined_from"]["stability"] == [str(p) for p in parts]

    packed = parts[1].with_name("part1.json.gz")  # a gzip-compressed part reads the same
    packed.write_bytes(gzip.compress(parts[1].read_bytes()))
    result = runner.invoke(app, [*args[:2], str(parts[0]), str(packed), *args[4:]])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["per_sample"] == record["per_sample"]

    parts[1].write_text("{not json")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "part1.json is not a JSON record" in " ".join(result.output.split())
    packed.write_bytes(b"not gzip")
    result = runner.invoke(app, [*args[:2], str(parts[0]), str(packed), *args[4:]])
    assert result.exit_code == 1
    assert "part1.json.gz is not a JSON record" in " ".join(result.output.split())


def test_start_past_the_samples_is_a_clear_error(tmp_path: Path) -> None:
    samples, reference = two_nacl_and_kcl(tmp_path)
    with pytest.raises(ValueError, match="start 3 is past the last sample"):
        evaluate_dng(samples, reference, start=3, stability=False, workers=0)

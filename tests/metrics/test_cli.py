"""``kldm evaluate`` and ``kldm relax`` through Typer's CliRunner."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from kldm_cli.cli.main import app

from .conftest import cscl_nacl, displaced, low_symmetry_crystal, rocksalt_nacl
from .helpers import write_cifs, write_csv

runner = CliRunner()


def test_evaluate_dng_on_a_few_cifs(tmp_path: Path) -> None:
    samples = write_cifs(tmp_path / "samples", [rocksalt_nacl(), cscl_nacl(), cscl_nacl()])
    (samples / "zz_broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    reference = write_csv(tmp_path / "train.csv", [rocksalt_nacl(), low_symmetry_crystal()])
    out = tmp_path / "dng.json"
    result = runner.invoke(
        app,
        ["evaluate", "dng", "--samples", str(samples), "--reference", str(reference),
         "--no-stability", "--workers", "0", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "uniqueness" in result.output and "66.67 %" in result.output
    assert "1 structure(s) of --samples" in " ".join(result.output.split())
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["novelty"] == pytest.approx(2 / 3)
    assert (metrics["num_samples"], metrics["num_unreadable"]) == (3, 1)


def test_evaluate_csp_with_a_patched_sampler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [rocksalt_nacl(), low_symmetry_crystal()]
    data = write_csv(tmp_path / "test.csv", targets)
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"not really weights")

    def fake_sample_csp(weights, compositions, num_samples, *, sampler, steps, seed, device, **_):
        return [[targets[i]] * num_samples for i in range(len(compositions))]

    monkeypatch.setattr("kldm_cli.sampling.pipeline.sample_csp", fake_sample_csp)
    out = tmp_path / "csp.json"
    result = runner.invoke(
        app,
        ["evaluate", "csp", "--weights", str(weights), "--data", str(data), "-k", "3",
         "--workers", "0", "--threads", "1", "--grid", "power:3", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "100.00 %" in result.output
    record = json.loads(out.read_text())
    assert (record["settings"]["grid"], record["settings"]["threads"]) == ("power:3", 1)
    assert record["metrics"]["num_candidates"] == 6
    expected = hashlib.sha256(b"not really weights").hexdigest()
    assert record["inputs"]["weights"]["sha256"] == expected

    chunk = ["--start", "1", "--limit", "1", "-k", "1"]
    result = runner.invoke(app, ["evaluate", "csp", "--data", str(data), "--workers", "0", *chunk])
    assert result.exit_code == 0, result.output
    # the fake proposes row 0's target (NaCl) for the chunk's only row, row 1 (Li2O2)
    assert "0.00 %" in result.output and "100.00 %" not in result.output


def test_evaluate_csp_rejects_an_unknown_sampler(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "test.csv", [rocksalt_nacl()])
    result = runner.invoke(app, ["evaluate", "csp", "--data", str(data), "--sampler", "ddim"])
    assert result.exit_code == 2
    assert "pc or em" in result.output


def test_relax_one_tiny_cif(tmp_path: Path, chgnet_model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kldm_cli.evaluation.relax.load_chgnet", lambda device="cpu": chgnet_model)
    source = write_cifs(tmp_path / "in", [displaced(rocksalt_nacl(5.5), 0.1)]) / "sample_000.cif"
    out = tmp_path / "relaxed"
    result = runner.invoke(app, ["relax", str(source), "--out", str(out), "--steps", "3"])
    assert result.exit_code == 0, result.output
    (written,) = sorted(out.glob("*.cif"))
    assert written.name == "rank_001_NaCl.cif"
    assert len(Structure.from_file(written)) == 2
    with open(out / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["rank"] == "1" and row["input"] == "sample_000"
    assert float(row["energy_per_atom_eV"]) < float(row["initial_energy_per_atom_eV"])


def test_relax_a_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["relax", str(tmp_path / "nope.cif"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "Error" in result.output
    assert "Traceback" not in result.output


def test_relax_unreadable_structures_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    result = runner.invoke(app, ["relax", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "no readable structure" in " ".join(result.output.split())


def _fake_evaluate_dng(monkeypatch: pytest.MonkeyPatch, **extra_metrics) -> dict:
    """Replace ``evaluate_dng`` by one that records its options (returned) and gives every
    metric 0.5, plus ``extra_metrics``."""
    seen: dict = {}

    def fake_evaluate_dng(samples, reference, **options):
        seen.update(options)
        keys = ["structural_validity", "compositional_validity", "uniqueness", "novelty",
                "cov_recall", "cov_precision", "wdist_density", "wdist_num_elements",
                "stable_rate", "sun_rate"]  # fmt: skip
        metrics = {"num_samples": 1, "num_hull_unknown": 0, **dict.fromkeys(keys, 0.5)}
        return {"metrics": {**metrics, **extra_metrics}, "inputs": {}}

    monkeypatch.setattr("kldm_cli.evaluation.dng_run.evaluate_dng", fake_evaluate_dng)
    return seen


def test_evaluate_dng_passes_the_hull_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _fake_evaluate_dng(monkeypatch)
    args = ["evaluate", "dng", "--samples", str(tmp_path), "--reference", str(tmp_path)]
    result = runner.invoke(
        app,
        [*args, "--no-elemental-crystals", "--relax-steps", "7", "--threads", "1",
         "--start", "50", "--limit", "25"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (seen["elemental_crystals"], seen["relax_steps"], seen["threads"]) == (False, 7, 1)
    assert (seen["start"], seen["limit"]) == (50, 25)
    assert "S.U.N." in result.output
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen["elemental_crystals"] is True
    assert seen["threads"] is None
    assert (seen["start"], seen["limit"]) == (0, None)


def _no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any dataset read fail loudly: a bad --device must be refused before reading."""

    def refuse(*args, **kwargs):
        raise AssertionError("read a dataset before checking --device")

    monkeypatch.setattr("kldm_cli.data.readers.load_dataset", refuse)


@pytest.mark.parametrize(
    ("device", "cuda", "message"),
    [("gpu", True, "Unknown device 'gpu'"), ("cuda", False, "--device cuda was asked for")],
)
def test_relax_and_evaluate_dng_check_the_device_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, cuda: bool, message: str
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    _no_reading(monkeypatch)
    source = write_cifs(tmp_path / "in", [rocksalt_nacl()])
    relax = ["relax", str(source), "--out", str(tmp_path / "out"), "--device", device]
    evaluate = ["evaluate", "dng", "--samples", str(source), "--reference", str(source),
                "--workers", "0", "--device", device]  # fmt: skip
    for args in (relax, evaluate):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split())
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_evaluate_dng_names_the_proxy_hull_and_takes_reference_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hull = "proxy hull: 12 structures of the bundled data files"
    seen = _fake_evaluate_dng(monkeypatch, hull=hull, below_hull_rate=0.5, far_below_hull_rate=0.5)
    args = ["evaluate", "dng", "--samples", str(tmp_path), "--reference", str(tmp_path)]
    result = runner.invoke(app, [*args, "--reference-entries", str(tmp_path / "mp.json.gz")])
    assert result.exit_code == 0, result.output
    assert seen["reference_entries"] == tmp_path / "mp.json.gz"
    output = " ".join(result.output.split())
    assert "proxy hull: 12 structures of the bundled data files" in output
    assert "below the hull by > 0.1 eV/atom" in output
    assert "not comparable with the papers' numbers" in output


def test_evaluate_dng_refuses_a_bad_entries_file_in_one_line(tmp_path: Path) -> None:
    samples = write_cifs(tmp_path / "samples", [rocksalt_nacl()])
    reference = write_csv(tmp_path / "train.csv", [rocksalt_nacl()])
    entries = write_csv(tmp_path / "entries.csv", [rocksalt_nacl()])
    result = runner.invoke(
        app,
        ["evaluate", "dng", "--samples", str(samples), "--reference", str(reference),
         "--reference-entries", str(entries), "--workers", "0"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "has no energy column" in " ".join(result.output.split())
    assert "Traceback" not in result.output

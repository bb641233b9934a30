"""``evaluate_csp`` with an injected sampler, ``evaluate_dng`` end to end on tiny sets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure

from kldm_cli.evaluation.csp_run import evaluate_csp
from kldm_cli.evaluation.dng_run import evaluate_dng

from .conftest import cscl_nacl, displaced, low_symmetry_crystal, rocksalt_nacl
from .helpers import write_cifs, write_csv


def bcc(symbol: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [symbol, symbol], [[0, 0, 0], [0.5, 0.5, 0.5]])


class ReturnsTargets:
    """A fake CSP sampler that 'predicts' the targets themselves and records its call."""

    def __init__(self, targets: list[Structure]) -> None:
        self.targets = targets
        self.calls: list[tuple] = []

    def __call__(self, weights, compositions, num_samples, *, sampler, steps, seed, device, **opts):
        self.calls.append((weights, compositions, num_samples, sampler, steps, seed, device))
        self.options = opts
        result = [[self.targets[i]] * num_samples for i in range(len(compositions))]
        opts["on_batch"](list(range(len(compositions) * num_samples)), sum(result, []))
        return result


def test_evaluate_csp_with_perfect_predictions(tmp_path: Path) -> None:
    targets = [low_symmetry_crystal(), rocksalt_nacl(), cscl_nacl()]
    data = write_csv(tmp_path / "test.csv", targets)
    fake = ReturnsTargets(targets)
    out = tmp_path / "results" / "csp.json"
    messages: list[str] = []
    record = evaluate_csp(
        data, k=2, limit=2, sampler="em", steps=17, seed=5, grid="power:3", threads=1,
        batch_atoms=64, workers=0, out=out, sampler_fn=fake, progress=messages.append,
    )  # fmt: skip

    assert record["metrics"]["match_rate"] == 1.0
    assert record["metrics"]["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert record["metrics"]["num_targets"] == 2  # limit
    (call,) = fake.calls
    assert call[2:] == (2, "em", 17, 5, "cpu")
    assert [sorted(c) for c in call[1]] == [[3, 3, 8, 8], [11, 17]]
    assert (fake.options["grid"], fake.options["batch_atoms"]) == ("power:3", 64)
    assert any("sampled 4/4 candidates" in m for m in messages)

    written = json.loads(out.read_text())
    assert written["metrics"] == record["metrics"]
    settings = written["settings"]
    assert (settings["k"], settings["limit"], settings["sampler"]) == (2, 2, "em")
    assert (settings["steps"], settings["seed"]) == (17, 5)
    assert (settings["grid"], settings["threads"], settings["batch_atoms"]) == ("power:3", 1, 64)
    assert written["inputs"]["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert {"kldm", "torch", "pymatgen"} <= set(written["versions"])
    assert {"sampling", "matching", "total"} <= set(written["timing_s"])
    assert [t["material_id"] for t in written["per_target"]] == ["ref-0", "ref-1"]


def test_evaluate_csp_counts_wrong_predictions(tmp_path: Path) -> None:
    targets = [rocksalt_nacl(), low_symmetry_crystal()]
    data = write_csv(tmp_path / "test.csv", targets)
    wrong = ReturnsTargets([cscl_nacl(), displaced(low_symmetry_crystal(), 0.05)])
    record = evaluate_csp(data, k=1, workers=0, sampler_fn=wrong)
    assert record["metrics"]["match_rate"] == 0.5
    assert record["per_target"][0]["matched"] is False
    assert record["inputs"]["weights"]["sha256"] is None


def test_evaluate_csp_refuses_bad_settings(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "test.csv", [rocksalt_nacl()])
    fake = ReturnsTargets([rocksalt_nacl()])
    with pytest.raises(ValueError, match="sampler"):
        evaluate_csp(data, sampler="ddim", sampler_fn=fake)
    with pytest.raises(ValueError, match="k"):
        evaluate_csp(data, k=0, sampler_fn=fake)
    with pytest.raises(ValueError, match="grid"):
        evaluate_csp(data, grid="cubic", sampler_fn=fake)
    assert fake.calls == []


def test_evaluate_dng_without_stability(tmp_path: Path, one_thread: None) -> None:
    samples = write_cifs(
        tmp_path / "samples", [rocksalt_nacl(), rocksalt_nacl(), cscl_nacl(), bcc("Fe", 2.87)]
    )
    reference = write_csv(tmp_path / "train.csv", [rocksalt_nacl(), low_symmetry_crystal()])
    out = tmp_path / "dng.json"
    torch.set_num_threads(2)
    record = evaluate_dng(samples, reference, stability=False, threads=1, workers=0, out=out)
    assert torch.get_num_threads() == 1
    assert record["settings"]["threads"] == 1
    metrics = record["metrics"]
    assert metrics["num_samples"] == 4
    assert metrics["validity"] == 1.0
    assert metrics["uniqueness"] == 0.75
    assert metrics["novelty"] == 0.5  # both rocksalt samples are in the training set
    assert metrics["cov_recall"] == 0.5  # rocksalt covered, the Li2O2 cell not
    assert "stable_rate" not in metrics
    assert json.loads(out.read_text())["settings"]["dataset_name"] == "mp_20"


def nacl_and_kcl_without_elemental_k(tmp_path: Path) -> tuple[Path, Path]:
    """Samples: slightly displaced rocksalt NaCl and rocksalt KCl. Reference: bcc Na, a Cl
    cell and rocksalt NaCl, so K has no elemental structure in the reference set."""
    kcl = rocksalt_nacl(6.3)
    kcl.replace_species({"Na": "K"})
    samples = write_cifs(tmp_path / "samples", [displaced(rocksalt_nacl(), 0.05), kcl])
    chlorine = Structure(Lattice.cubic(3.0), ["Cl"], [[0, 0, 0]])
    reference = write_csv(tmp_path / "train.csv", [bcc("Na", 4.23), chlorine, rocksalt_nacl()])
    return samples, reference


def test_evaluate_dng_with_chgnet_stability(
    tmp_path: Path, chgnet_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kldm_cli.evaluation.relax.load_chgnet", lambda device="cpu": chgnet_model)
    samples, reference = nacl_and_kcl_without_elemental_k(tmp_path)
    record = evaluate_dng(samples, reference, relax_steps=3, elemental_crystals=False, workers=0)
    nacl, potassium = record["per_sample"]
    assert abs(nacl["e_above_hull"]) < 0.1  # relaxed rocksalt sits on the hull
    assert nacl["stable"] and not nacl["novel"] and not nacl["sun"]
    assert potassium["e_above_hull"] is None  # no elemental K in the reference
    assert record["metrics"]["num_hull_unknown"] == 1
    assert record["metrics"]["stable_rate"] == 0.5
    hull = record["inputs"]["hull_reference"]
    assert hull["energy_kind"] == "single-point"
    assert hull["elements_with_reference"] == ["Cl", "Na"]
    assert hull["elemental_crystals"] == []


def test_ase_elemental_crystals_complete_the_hull(
    tmp_path: Path, chgnet_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The K sample has no elemental K in the reference set; ASE's bcc K, relaxed with CHGNet,
    makes its hull defined. Na gets ASE's bcc Na as a second candidate; Cl has none in ASE."""
    monkeypatch.setattr("kldm_cli.evaluation.relax.load_chgnet", lambda device="cpu": chgnet_model)
    samples, reference = nacl_and_kcl_without_elemental_k(tmp_path)
    record = evaluate_dng(samples, reference, relax_steps=3, workers=0)
    hull = record["inputs"]["hull_reference"]
    assert hull["elemental_crystals"] == ["K", "Na"]
    assert hull["elements_with_reference"] == ["Cl", "K", "Na"]
    assert record["metrics"]["num_hull_unknown"] == 0
    assert all(entry["e_above_hull"] is not None for entry in record["per_sample"])
    assert record["settings"]["elemental_crystals"] is True

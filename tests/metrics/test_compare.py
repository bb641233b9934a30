"""``compare_csp_records`` / ``compare_dng_records`` / ``kldm evaluate compare``: paired
comparison of two records, checked on records made by ``evaluate_csp`` and ``evaluate_dng`` and
against scipy's exact binomial test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymatgen.core import Structure
from scipy.stats import binomtest
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.evaluation.compare import compare_csp_records, compare_dng_records, mcnemar_exact_p
from kldm_cli.evaluation.csp_run import evaluate_csp
from kldm_cli.evaluation.dng_run import evaluate_dng
from kldm_cli.evaluation.records import write_record

from .conftest import collapsed_nacl, cscl_nacl, displaced, low_symmetry_crystal, rocksalt_nacl
from .helpers import write_cifs, write_csv

runner = CliRunner()

ROCKSALT_KCL = rocksalt_nacl(6.3)
ROCKSALT_KCL.replace_species({"Na": "K"})
TARGETS = [rocksalt_nacl(), low_symmetry_crystal(), ROCKSALT_KCL]
IDS = ["mp-1", "mp-2", "mp-3"]
#: Every fake model gets this one right.
ALWAYS_RIGHT = low_symmetry_crystal().composition.reduced_formula


def wrong_polymorph(structure: Structure) -> Structure:
    """The CsCl-type crystal of the same binary composition (never matches a rocksalt)."""
    wrong = cscl_nacl()
    if "K" in structure.composition:
        wrong.replace_species({"Na": "K"})
    return wrong


def model(correct: set[str]):
    """A fake CSP model that proposes the target itself for the formulas in ``correct`` (and
    ``ALWAYS_RIGHT``) and the wrong polymorph for the others."""

    def sample(weights, compositions, num_samples, **options):
        out = []
        for composition in compositions:
            target = next(t for t in TARGETS if sorted(t.atomic_numbers) == sorted(composition))
            right = target.composition.reduced_formula in correct | {ALWAYS_RIGHT}
            out.append([target if right else wrong_polymorph(target)] * num_samples)
        return out

    return sample


def record(tmp_path: Path, correct: set[str], name: str, targets=TARGETS, ids=IDS) -> Path:
    data = write_csv(tmp_path / f"{name}.csv", targets, ids=ids)
    result = evaluate_csp(data, k=1, workers=0, sampler_fn=model(correct))
    return write_record(result, tmp_path / f"{name}.json")


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (0, 1), (3, 3), (2, 9), (94, 120), (40, 7)])
def test_mcnemar_p_is_the_two_sided_exact_binomial_test(only_a: int, only_b: int) -> None:
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b).pvalue
    assert mcnemar_exact_p(only_a, only_b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact_p(only_a, only_b) == mcnemar_exact_p(only_b, only_a)


def test_paired_counts_of_two_real_records(tmp_path: Path) -> None:
    a = json.loads(record(tmp_path, {"NaCl"}, "a").read_text())
    b = json.loads(record(tmp_path, {"KCl"}, "b").read_text())
    assert [e["matched"] for e in a["per_target"]] == [True, True, False]

    result = compare_csp_records(a, b)

    assert result["num_targets"] == 3
    assert result["num_matched"] == [2, 2]
    assert (result["num_both"], result["num_only_a"], result["num_only_b"]) == (1, 1, 1)
    assert result["difference"] == 0
    assert result["p_value"] == 1.0
    assert result["same_weights"] and result["settings_differ"] == {}


def test_only_shared_targets_are_compared(tmp_path: Path) -> None:
    a = json.loads(record(tmp_path, set(), "a").read_text())
    b = json.loads(record(tmp_path, {"NaCl", "KCl"}, "b", TARGETS[1:], IDS[1:]).read_text())

    result = compare_csp_records(a, b)

    assert result["num_targets"] == 2 and result["num_unshared_targets"] == 1
    assert result["num_matched"] == [1, 2]
    assert result["difference"] == pytest.approx(0.5)


def test_cli_prints_and_writes_the_comparison(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    a, b = record(tmp_path, set(), "a"), record(tmp_path, {"NaCl", "KCl"}, "b")
    out = tmp_path / "cmp" / "comparison.json"

    result = runner.invoke(app, ["evaluate", "compare", str(a), str(b), "--out", str(out)])

    assert result.exit_code == 0, result.output
    assert "only A / only B" in result.output and "0 / 2" in result.output
    assert "+66.67 points" in result.output
    written = json.loads(out.read_text())
    assert written["num_matched"] == [1, 3]
    assert written["p_value"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ DNG


def dng_record(stable: list[bool | None], valid: list[bool] | None = None, seed: int = 0) -> dict:
    """A DNG record of samples ``sample_000, ...``: ``stable[i]`` None for a sample whose
    stability was not measured (outside the combined chunks)."""
    valid = valid or [True] * len(stable)
    per_sample = []
    for i, (is_stable, is_valid) in enumerate(zip(stable, valid, strict=True)):
        entry = {
            "index": i, "material_id": f"sample_{i:03d}", "formula": "NaCl",
            "structurally_valid": True, "compositionally_valid": is_valid, "unique": True,
            "novel": True,
        }  # fmt: skip
        if is_stable is not None:
            entry.update(e_above_hull=0.0 if is_stable else 0.5, stable=is_stable, sun=is_stable)
        per_sample.append(entry)
    return {
        "task": "dng", "per_sample": per_sample, "metrics": {"cov_recall": 0.5},
        "settings": {"samples_metadata": {"seed": seed, "weights_sha256": "w"}},
        "inputs": {"samples": {"sha256": f"samples-{seed}"}},
    }  # fmt: skip


def test_dng_samples_are_paired_by_index_over_what_both_measured() -> None:
    a = dng_record([True, True, False, False, True, None], valid=[True] * 5 + [False])
    b = dng_record([True, False, True, True, None, True])

    result = compare_dng_records(a, b)

    assert result["num_samples"] == 6 and result["num_unshared_samples"] == 0
    stable = result["outcomes"]["stable"]
    # samples 4 (A only) and 5 (B only) were measured by one record: left out
    assert stable["num_paired"] == 4
    assert stable["num"] == [2, 3] and stable["rate"] == [0.5, 0.75]
    assert (stable["num_both"], stable["num_only_a"], stable["num_only_b"]) == (1, 1, 2)
    assert stable["p_value"] == pytest.approx(binomtest(1, 3).pvalue)
    assert stable["difference"] == pytest.approx(0.25)
    assert result["outcomes"]["sun"]["num"] == [2, 3]
    valid = result["outcomes"]["valid"]
    assert valid["num_paired"] == 6 and (valid["num_only_a"], valid["num_only_b"]) == (0, 1)
    assert result["set_metrics"]["cov_recall"] == [0.5, 0.5]
    assert result["same_weights"] is True and result["same_samples"] is True


def test_dng_records_name_what_differs() -> None:
    a = dng_record([True, False, None])
    b = dng_record([True, True], seed=1)
    b["settings"]["samples_metadata"]["weights_sha256"] = None  # samples of an older kldm

    result = compare_dng_records(a, b)

    assert result["num_samples"] == 2 and result["num_unshared_samples"] == 1
    assert result["settings_differ"] == {"seed": [0, 1]}
    assert result["same_weights"] is None and result["same_samples"] is False


def test_dng_comparison_of_two_evaluated_sample_sets(tmp_path: Path) -> None:
    reference = write_csv(tmp_path / "train.csv", [low_symmetry_crystal(), ROCKSALT_KCL])
    nacl = [displaced(rocksalt_nacl(), 0.05, seed=seed) for seed in range(3)]
    a = evaluate_dng(write_cifs(tmp_path / "a", nacl), reference, stability=False, workers=0)
    b_samples = [nacl[0], collapsed_nacl(), nacl[2]]
    b = evaluate_dng(write_cifs(tmp_path / "b", b_samples), reference, stability=False, workers=0)

    result = compare_dng_records(a, b)

    assert result["num_samples"] == 3
    valid = result["outcomes"]["valid"]
    assert valid["num"] == [3, 2] and (valid["num_only_a"], valid["num_only_b"]) == (1, 0)
    assert "stable" not in result["outcomes"]  # neither record measured stability
    assert result["set_metrics"]["cov_recall"] == [
        a["metrics"]["cov_recall"], b["metrics"]["cov_recall"]
    ]  # fmt: skip
    assert result["same_samples"] is False


def test_cli_compares_dng_records(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    a = write_record(dng_record([True, False, False, None]), tmp_path / "a.json")
    b_record = dng_record([True, True, True], seed=2)
    del b_record["settings"]["samples_metadata"]["weights_sha256"]
    b = write_record(b_record, tmp_path / "b.json")
    out = tmp_path / "comparison.json"

    result = runner.invoke(app, ["evaluate", "compare", str(a), str(b), "--out", str(out)])

    assert result.exit_code == 0, result.output
    stable_row = next(line for line in result.output.splitlines() if "stable" in line)
    assert "33.33 %" in stable_row and "100.00 %" in stable_row and "0 / 2" in stable_row
    assert "1 sample(s) are in only one record" in result.output
    assert "differ in seed" in result.output
    assert "weights that made the samples are not recorded" in " ".join(result.output.split())
    assert json.loads(out.read_text())["outcomes"]["sun"]["num_only_b"] == 2


def csp_record(tmp_path: Path) -> dict:
    return json.loads(record(tmp_path, set(), "b").read_text())


def two_sample_dng_record(tmp_path: Path) -> dict:
    return dng_record([True, False])


@pytest.mark.parametrize(
    "make, change, message",
    [
        (csp_record, lambda r: r.update(task="dng"),
         "only records of the same task can be compared"),
        (csp_record, lambda r: r.pop("per_target"), "is not a `kldm evaluate csp` record"),
        (csp_record, lambda r: r["per_target"].append(dict(r["per_target"][0])), "appears twice"),
        (csp_record, lambda r: r["per_target"][0].update(formula="KCl"), "not the same test rows"),
        (csp_record,
         lambda r: [e.update(material_id="x" + e["material_id"]) for e in r["per_target"]],
         "no target in common"),
        (two_sample_dng_record, lambda r: r.update(task="csp"),
         "only records of the same task can be compared"),
        (two_sample_dng_record, lambda r: r.pop("per_sample"),
         "is not a `kldm evaluate dng` record"),
        (two_sample_dng_record, lambda r: r["per_sample"].append(dict(r["per_sample"][0])),
         "appears twice"),
        (two_sample_dng_record,
         lambda r: [e.update(material_id="x" + e["material_id"]) for e in r["per_sample"]],
         "no sample in common"),
    ],
)  # fmt: skip
def test_records_that_cannot_be_compared_are_refused_by_name(
    tmp_path: Path, monkeypatch, make, change, message: str
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    a = write_record(make(tmp_path), tmp_path / "a.json")
    bad = make(tmp_path)
    change(bad)
    bad_path = write_record(bad, tmp_path / "bad.json")

    result = runner.invoke(app, ["evaluate", "compare", str(a), str(bad_path)])

    assert result.exit_code != 0
    assert message in " ".join(result.output.split())  # the error names long paths: it wraps

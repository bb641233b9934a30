"""``compare_csp_records`` / ``kldm evaluate compare``: paired comparison of two CSP records,
checked on records made by ``evaluate_csp`` and against scipy's exact binomial test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymatgen.core import Structure
from scipy.stats import binomtest
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.compare import compare_csp_records, mcnemar_exact_p
from kldm_cli.evaluate import evaluate_csp, write_record

from .conftest import cscl_nacl, low_symmetry_crystal, rocksalt_nacl
from .helpers import write_csv

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


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(task="dng"), "is not a `kldm evaluate csp` record"),
        (lambda r: r["per_target"].append(dict(r["per_target"][0])), "appears twice"),
        (lambda r: r["per_target"][0].update(formula="KCl"), "not the same test rows"),
        (lambda r: [e.update(material_id="x" + e["material_id"]) for e in r["per_target"]],
         "no target in common"),
    ],
)  # fmt: skip
def test_records_that_cannot_be_compared_are_refused_by_name(
    tmp_path: Path, monkeypatch, change, message: str
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    a = record(tmp_path, set(), "a")
    bad = json.loads(record(tmp_path, set(), "b").read_text())
    change(bad)
    bad_path = write_record(bad, tmp_path / "bad.json")

    result = runner.invoke(app, ["evaluate", "compare", str(a), str(bad_path)])

    assert result.exit_code != 0
    assert message in " ".join(result.output.split())  # the error names long paths: it wraps

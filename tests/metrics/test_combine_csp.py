"""CSP evaluated in chunks of test rows (``evaluate_csp(start=, limit=)`` or one CSV per chunk)
and merged with ``combine_csp_records`` / ``kldm evaluate combine`` equals one run over all rows."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.evaluation.combine import combine_csp_records
from kldm_cli.evaluation.csp_run import evaluate_csp
from kldm_cli.evaluation.records import write_record

from .conftest import collapsed_nacl, displaced, low_symmetry_crystal, rocksalt_nacl
from .helpers import write_csv

runner = CliRunner()


def potassium_chloride(structure_type: str) -> Structure:
    if structure_type == "rocksalt":
        structure = rocksalt_nacl(6.3)
    else:
        structure = Structure(Lattice.cubic(3.8), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structure.replace_species({"Na": "K"})
    return structure


BCC_IRON = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])

#: Test rows and the two candidates the fake model proposes for each: a match after an invalid
#: candidate, two displaced copies (RMSE > 0), a wrong polymorph only, an exact match.
TARGETS = [rocksalt_nacl(), low_symmetry_crystal(), potassium_chloride("rocksalt"), BCC_IRON]
CANDIDATES = [
    [collapsed_nacl(), rocksalt_nacl()],
    [displaced(low_symmetry_crystal(), 0.08, seed=1), displaced(low_symmetry_crystal(), 0.04)],
    [potassium_chloride("cscl"), potassium_chloride("cscl")],
    [BCC_IRON, BCC_IRON],
]
IDS = ["mp-10", "mp-11", "mp-12", "mp-13"]


def by_composition(weights, compositions, num_samples, **options):
    """A fake CSP model: the candidates of the test row with this composition, so a row gets
    the same candidates whichever chunk it is in."""
    rows = {tuple(sorted(t.atomic_numbers)): i for i, t in enumerate(TARGETS)}
    return [CANDIDATES[rows[tuple(sorted(c))]][:num_samples] for c in compositions]


def evaluate(data: Path, **options) -> dict:
    return evaluate_csp(data, k=2, workers=0, sampler_fn=by_composition, **options)


def outcomes(record: dict) -> list[tuple]:
    """Per target: row, id, matched, best candidate, counts and RMSE (rounded)."""
    return [
        (e["index"], e["material_id"], e["matched"], e["best_candidate"], e["num_invalid"],
         None if e["rmse"] is None else round(e["rmse"], 9))
        for e in record["per_target"]
    ]  # fmt: skip


@pytest.fixture
def whole(tmp_path: Path) -> tuple[Path, dict]:
    data = write_csv(tmp_path / "test.csv", TARGETS, ids=IDS)
    return data, evaluate(data)


def test_the_fake_model_gives_every_kind_of_outcome(whole) -> None:
    _, record = whole
    assert [e["matched"] for e in record["per_target"]] == [True, True, False, True]
    assert record["per_target"][0]["best_candidate"] == 1  # candidate 0 is invalid
    assert record["per_target"][1]["rmse"] > 1e-3
    assert record["metrics"]["num_invalid"] == 1


def test_start_and_limit_chunks_combine_to_the_whole_run(whole) -> None:
    data, record = whole
    chunks = [evaluate(data, start=0, limit=1), evaluate(data, start=1, limit=2)]
    chunks.append(evaluate(data, start=3))
    assert [e["index"] for e in chunks[1]["per_target"]] == [1, 2]  # rows of the whole file
    assert chunks[1]["settings"]["start"] == 1

    combined = combine_csp_records(chunks, part_names=["a", "b", "c"])

    assert outcomes(combined) == outcomes(record)
    for key, value in record["metrics"].items():
        assert combined["metrics"][key] == pytest.approx(value), key
    assert combined["metrics"]["match_rate"] == 0.75
    assert combined["settings"]["targets"] == "4 of 4 test rows, in 3 records"
    assert combined["inputs"]["data"]["sha256"] == record["inputs"]["data"]["sha256"]
    assert [p["start"] for p in combined["inputs"]["csp_records"]] == [0, 1, 3]


def test_chunks_cut_as_files_combine_with_the_whole_file(tmp_path: Path, whole) -> None:
    data, record = whole
    late = write_csv(tmp_path / "rows3-4.csv", TARGETS[2:], ids=IDS[2:])
    early = write_csv(tmp_path / "rows1-2.csv", TARGETS[:2], ids=IDS[:2])
    chunks = [evaluate(late), evaluate(early)]
    assert [e["index"] for e in chunks[0]["per_target"]] == [0, 1]  # rows of its own file

    combined = combine_csp_records(chunks, data=data)

    assert outcomes(combined) == outcomes(record)  # re-indexed and in the file's order
    assert combined["metrics"]["rmse"] == pytest.approx(record["metrics"]["rmse"])
    assert combined["inputs"]["data"]["path"] == str(data)
    with pytest.raises(ValueError, match="different test files; give the whole test file"):
        combine_csp_records(chunks)


def test_a_subset_of_rows_is_reported_as_such(whole) -> None:
    data, _ = whole
    combined = combine_csp_records([evaluate(data, limit=2)], data=data)
    assert combined["settings"]["targets"] == "2 of 4 test rows, in 1 records"
    assert combined["metrics"]["num_targets"] == 2


def change(path: str, value):
    def apply(record: dict) -> None:
        *parents, key = path.split(".")
        for parent in parents:
            record = record[parent]
        record[key] = value

    return apply


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (change("task", "dng"), "b.json is not a `kldm evaluate csp` record"),
        (change("settings.k", 20), "b.json used k = 20 but a.json used 2"),
        (change("settings.steps", 50), "b.json used steps = 50"),
        (change("settings.sampler", "em"), "b.json used sampler = .em. but a.json used .pc."),
        (change("inputs.weights.sha256", "f" * 64), "b.json evaluated other weights"),
    ],
)
def test_a_part_that_does_not_fit_is_refused(whole, edit, message: str) -> None:
    data, _ = whole
    good, bad = evaluate(data, limit=2), evaluate(data, start=2)
    edit(bad)
    with pytest.raises(ValueError, match=message):
        combine_csp_records([good, bad], part_names=["a.json", "b.json"])


def test_a_target_evaluated_twice_is_refused(whole) -> None:
    data, record = whole
    with pytest.raises(ValueError, match="'mp-12' is in both a.json and b.json"):
        combine_csp_records([record, evaluate(data, start=2)], part_names=["a.json", "b.json"])


def test_targets_must_be_rows_of_the_whole_file(tmp_path: Path, whole) -> None:
    data, record = whole
    stranger = copy.deepcopy(record)
    stranger["per_target"][3]["material_id"] = "mp-99"
    with pytest.raises(ValueError, match="x.json: target 'mp-99' is not in"):
        combine_csp_records([stranger], part_names=["x.json"], data=data)
    renamed = copy.deepcopy(record)
    renamed["per_target"][0]["formula"] = "KCl"
    with pytest.raises(ValueError, match="target 'mp-10' is KCl but NaCl in"):
        combine_csp_records([renamed], data=data)


def test_start_past_the_rows_is_a_clear_error(whole) -> None:
    data, _ = whole
    with pytest.raises(ValueError, match="start 4 is past the last test structure"):
        evaluate(data, start=4)
    with pytest.raises(ValueError, match="start must be an index"):
        evaluate(data, start=-1)


def test_combine_command_for_csp(tmp_path: Path, whole) -> None:
    data, record = whole
    parts = [
        write_record(evaluate(data, limit=2), tmp_path / "a.json"),
        write_record(evaluate(data, start=2), tmp_path / "b.json"),
    ]
    out = tmp_path / "all.json"
    args = ["evaluate", "combine", *map(str, parts), "--out", str(out)]
    result = runner.invoke(app, [*args, "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "MR@2" in result.output and "75.00 %" in result.output
    assert outcomes(json.loads(out.read_text())) == outcomes(record)

    result = runner.invoke(app, [*args, "--base", str(parts[0])])
    assert result.exit_code == 2
    assert "without a base record" in " ".join(result.output.split())


def test_dng_chunks_still_need_a_base(tmp_path: Path) -> None:
    part = write_record({"task": "dng", "per_sample": []}, tmp_path / "dng.json")
    result = runner.invoke(app, ["evaluate", "combine", str(part), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "need the whole set's record" in " ".join(result.output.split())


def test_ranked_chunks_combine_to_the_whole_ranked_run(tmp_path: Path, chgnet_model) -> None:
    from kldm_cli.evaluation.search import SearchSettings

    data = write_csv(tmp_path / "test.csv", TARGETS, ids=IDS)
    search = SearchSettings(candidates=2, screen=0, relax_steps=2, frequency_weight=0.0)
    options = dict(search=search, chgnet=chgnet_model)
    record = evaluate(data, **options)
    chunks = [evaluate(data, start=0, limit=2, **options), evaluate(data, start=2, **options)]
    combined = combine_csp_records(chunks, part_names=["a", "b"])
    whole, merged = record["ranked"]["metrics"], combined["ranked"]["metrics"]
    for key in ("raw_mr_at_1", "raw_mr_at_k", "ranked_top_1", "ranked_top_3", "ranked_top_5"):
        assert merged[key]["num_matched"] == whole[key]["num_matched"], key
    assert merged["num_targets"] == 4
    assert merged["raw_mr_at_k"]["num_matched"] == 3  # the fake model's three matches
    stages = merged["right_structure_stages"]
    assert stages == whole["right_structure_stages"]
    assert stages["num_targets"] == 4 and stages["sampled"] == 3  # screen 0: all kept
    assert stages["kept_by_screen"] == 3 >= stages["ranked_first"]

    parts = [
        write_record(chunk, tmp_path / f"{name}.json")
        for chunk, name in zip(chunks, "ab", strict=True)
    ]
    args = ["evaluate", "combine", *map(str, parts), "--out", str(tmp_path / "all.json")]
    result = runner.invoke(app, [*args, "--data", str(data)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"3 / 3 / {stages['ranked_first']} of 4" in result.output

    # a chunk written before the frequency weight existed ranked by energy alone (weight 0)
    del chunks[0]["ranked"]["settings"]["frequency_weight"]
    assert combine_csp_records(chunks, part_names=["a", "b"])["ranked"]["settings"] == {
        **chunks[1]["ranked"]["settings"]
    }
    chunks[1]["ranked"]["settings"]["frequency_weight"] = 0.01
    with pytest.raises(ValueError, match="other settings"):
        combine_csp_records(chunks, part_names=["a", "b"])
    chunks[1]["ranked"]["settings"]["frequency_weight"] = 0.0
    chunks[1]["ranked"]["settings"]["screen"] = 7
    with pytest.raises(ValueError, match="other settings"):
        combine_csp_records(chunks, part_names=["a", "b"])

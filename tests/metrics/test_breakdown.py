"""``breakdown_csp_record`` / ``kldm evaluate breakdown``: the match rate of a CSP record split by
number of elements, atoms in the cell and compositions seen in a reference set, checked on
hand-built records with known group counts and on records made by ``evaluate_csp``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.data.readers import load_dataset
from kldm_cli.evaluation.breakdown import atom_group, breakdown_csp_record, element_group
from kldm_cli.evaluation.csp_run import evaluate_csp
from kldm_cli.evaluation.records import write_record

from .conftest import cscl_nacl, low_symmetry_crystal, rocksalt_nacl
from .helpers import write_csv

runner = CliRunner()


def entry(material_id: str, formula: str, rmse: float | None) -> dict:
    """A per-target entry; ``rmse`` None means not matched."""
    return {"material_id": material_id, "formula": formula, "matched": rmse is not None,
            "rmse": rmse}  # fmt: skip


#: 1, 2, 4, 4, 5 and 6 elements; three matched.
HAND_RECORD = {
    "task": "csp",
    "metrics": {"k": 1},
    "per_target": [
        entry("mp-1", "Fe", None),
        entry("mp-2", "NaCl", 0.1),
        entry("mp-3", "LiFePO4", 0.3),
        entry("mp-4", "LiFePO4", None),
        entry("mp-5", "BaSrCaTiO6", 0.2),
        entry("mp-6", "K2NaAlLiSiO8", None),
    ],
}


def by_group(groups: list[dict]) -> dict[str, tuple[int, int, float | None]]:
    return {g["group"]: (g["num_targets"], g["num_matched"], g["rmse"]) for g in groups}


def test_groups_of_a_hand_built_record() -> None:
    result = breakdown_csp_record(HAND_RECORD, reference_formulas={"Na2Cl2", "Fe", "CuO"})

    assert result["match_rate"] == pytest.approx(3 / 6)
    assert [g["group"] for g in result["splits"]["elements"]] == [
        "1 element", "2 elements", "4 elements", "5+ elements",
    ]  # fmt: skip
    elements = by_group(result["splits"]["elements"])
    assert elements["1 element"] == (1, 0, None)
    assert elements["2 elements"] == (1, 1, pytest.approx(0.1))
    assert elements["4 elements"] == (2, 1, pytest.approx(0.3))
    assert elements["5+ elements"] == (2, 1, pytest.approx(0.2))
    four = result["splits"]["elements"][2]
    assert four["match_rate"] == 0.5
    assert four["stderr"] == pytest.approx(math.sqrt(0.5 * 0.5 / 2))
    # "Na2Cl2" in the reference is NaCl: compositions compare reduced.
    assert by_group(result["splits"]["seen"]) == {
        "in the reference": (2, 1, pytest.approx(0.1)),
        "not in the reference": (4, 2, pytest.approx(0.25)),
    }
    assert "atoms" not in result["splits"]
    # The groups of every split add up to the record.
    for groups in result["splits"].values():
        assert sum(g["num_targets"] for g in groups) == 6
        assert sum(g["num_matched"] for g in groups) == 3


@pytest.mark.parametrize(
    "num_atoms, label",
    [(1, "1–4 atoms"), (4, "1–4 atoms"), (5, "5–8 atoms"), (20, "17–20 atoms"),
     (21, "21+ atoms"), (52, "21+ atoms")],
)  # fmt: skip
def test_atom_group_edges(num_atoms: int, label: str) -> None:
    assert atom_group(num_atoms)[1] == label


def test_element_groups_are_ordered_by_count() -> None:
    formulas = ["K2NaAlLiSiO8", "NaCl", "Fe", "LiFePO4", "LiFeO2"]
    assert sorted(element_group(f) for f in formulas) == [
        (1, "1 element"), (2, "2 elements"), (3, "3 elements"), (4, "4 elements"),
        (5, "5+ elements"),
    ]  # fmt: skip


TARGETS = [rocksalt_nacl(), low_symmetry_crystal(), rocksalt_nacl() * (2, 2, 2)]
IDS = ["mp-1", "mp-2", "mp-3"]


def small_cells_right(weights, compositions, num_samples, **options):
    """A fake CSP model: the target itself for cells of at most 4 atoms, else a wrong
    polymorph."""
    out = []
    for composition in compositions:
        target = next(t for t in TARGETS if sorted(t.atomic_numbers) == sorted(composition))
        out.append([target if len(target) <= 4 else cscl_nacl()] * num_samples)
    return out


@pytest.fixture
def real_record(tmp_path: Path) -> tuple[Path, Path]:
    data = write_csv(tmp_path / "test.csv", TARGETS, ids=IDS)
    result = evaluate_csp(data, k=1, workers=0, sampler_fn=small_cells_right)
    return write_record(result, tmp_path / "record.json"), data


def test_split_by_atoms_reads_the_records_test_file(real_record: tuple[Path, Path]) -> None:
    record_path, data = real_record
    record = json.loads(record_path.read_text())

    result = breakdown_csp_record(record, data=load_dataset(data))

    assert by_group(result["splits"]["atoms"]) == {
        "1–4 atoms": (2, 2, pytest.approx(0.0, abs=1e-6)),
        "13–16 atoms": (1, 0, None),
    }
    assert by_group(result["splits"]["elements"])["2 elements"][:2] == (3, 2)


def test_another_test_file_is_refused(real_record: tuple[Path, Path], tmp_path: Path) -> None:
    record_path, _ = real_record
    other = write_csv(tmp_path / "other.csv", TARGETS[:2], ids=IDS[:2])
    record = json.loads(record_path.read_text())

    with pytest.raises(ValueError, match="is not the test file of this record"):
        breakdown_csp_record(record, data=load_dataset(other), data_name="other.csv")


def test_cli_prints_and_writes_the_breakdown(
    real_record: tuple[Path, Path], tmp_path: Path
) -> None:
    record_path, data = real_record
    reference = write_csv(tmp_path / "train.csv", [rocksalt_nacl(6.0)], ids=["mp-9"])
    out = tmp_path / "breakdown.json"

    result = runner.invoke(
        app,
        ["evaluate", "breakdown", str(record_path), "--data", str(data),
         "--reference", str(reference), "--out", str(out)],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "by atoms in the cell" in result.output
    assert "13–16 atoms" in result.output
    written = json.loads(out.read_text())
    assert written["num_targets"] == 3
    assert by_group(written["splits"]["seen"]) == {
        "in the reference": (2, 1, pytest.approx(0.0, abs=1e-6)),
        "not in the reference": (1, 1, pytest.approx(0.0, abs=1e-6)),
    }


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"task": "dng", "per_sample": []}', "is not a `kldm evaluate csp` record"),
        ("not json", "is not a JSON record"),
        ('{"task": "csp", "metrics": {"k": 1}, "per_target": []}', "has no target"),
    ],
)
def test_cli_refuses_what_is_not_a_csp_record(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "record.json"
    path.write_text(content)

    result = runner.invoke(app, ["evaluate", "breakdown", str(path)])

    assert result.exit_code != 0
    assert message in " ".join(result.output.split())  # rich wraps the long tmp path

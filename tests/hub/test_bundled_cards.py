"""The records and model cards shipped in weights/ agree with the weights beside them.

Every evaluation record (``eval_*.json``, or ``eval_*.json.gz`` for the large ranked-search ones)
in a bundled model folder must have been measured with that folder's ``model.safetensors`` (CSP
records store its sha256), and the card's
``kldm_metrics`` must state each record's headline numbers: a stale record or a card left behind
after a weights swap fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kldm_cli.data.readers import file_sha256
from kldm_cli.evaluation.combine import load_records
from kldm_cli.hub import card_metrics

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
FOLDERS = sorted(path.parent for path in WEIGHTS.glob("*/model.safetensors"))
# Card values are written with 3-4 decimals: a record agrees when it rounds to the card's value.
TOLERANCE = 5e-4
#: The sections of every model card, in order (a card is for users: no run history).
TEMPLATE = ["Task", "Data", "Training in brief", "Metrics", "Where it fails", "Limitations"]


def _records(folder: Path) -> dict[str, dict]:
    paths = sorted([*folder.glob("eval_*.json"), *folder.glob("eval_*.json.gz")])
    return dict(zip((path.name for path in paths), load_records(paths), strict=True))


def _states(card: dict, value: float) -> bool:
    return any(abs(float(number) - value) <= TOLERANCE for number in card.values())


def test_the_release_folders_are_found() -> None:
    assert {folder.name for folder in FOLDERS} >= {"kldm-csp-mp20", "kldm-dng-mp20"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_csp_records_were_measured_with_these_weights(folder: Path) -> None:
    records = {name: r for name, r in _records(folder).items() if r.get("task") == "csp"}
    expected = file_sha256(folder / "model.safetensors")
    for name, record in records.items():
        assert record["inputs"]["weights"].get("sha256") == expected, f"{folder.name}/{name}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_card_states_every_records_headline(folder: Path) -> None:
    card = card_metrics(folder)
    assert card, f"{folder.name}: the card has no kldm_metrics"
    for name, record in _records(folder).items():
        metrics = record["metrics"]
        if record.get("task") == "csp":
            assert _states(card, metrics["match_rate"]), f"{folder.name}: {name} match rate"
            continue
        for key, value in card.items():  # DNG: card keys name the record's metrics
            measured = metrics.get(key, metrics.get(key.removesuffix("_chgnet")))
            if measured is not None:
                assert abs(float(value) - measured) <= TOLERANCE, f"{folder.name}: {key} in {name}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_card_follows_the_template(folder: Path) -> None:
    text = (folder / "README.md").read_text()
    assert re.findall(r"^## (.+)$", text, flags=re.MULTILINE) == TEMPLATE, folder.name
    assert not re.search(r"\bissues? #?\d+", text, flags=re.IGNORECASE), f"{folder.name}: issue"
    assert not re.search(r"\bsession\b", text), f"{folder.name}: a run history"

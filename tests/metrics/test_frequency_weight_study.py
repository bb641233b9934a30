"""``benchmarks/frequency_weight_study.py`` re-ranks finished ranked-search records: at weight 0 it
must give back the record's own order, and a large weight must order by sampling frequency."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kldm_cli.evaluation.combine import load_records

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "frequency_weight_study.py"
#: A committed chunk of the MP-20 ranked search that keeps every candidate's fate.
CHUNK = ROOT / "training/csp-mp20-medium/ranked/mp20_test_rank_k20_em100p3_s5_r100_start100.json.gz"


def _study():
    spec = importlib.util.spec_from_file_location("frequency_weight_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weight_zero_gives_back_the_records_ranking() -> None:
    study = _study()
    targets = study.targets_with_fates([CHUNK], 0, 10**6)
    assert len(targets) == 10
    (record,) = load_records([CHUNK])
    first = [study.reranked_matches(t["search"], 0.0)[0] for t in targets]
    assert first == [t["search"]["ranked_match_rank"] == 1 for t in targets]
    (row,) = study.study(targets, [0.0])
    assert row["top_1"] == record["ranked"]["metrics"]["ranked_top_1"]["num_matched"]
    assert (row["wins"], row["losses"]) == (0, 0)


def test_a_large_weight_ranks_the_most_sampled_structure_first() -> None:
    search = {
        "candidates": [
            {"status": "ranked", "duplicate_of": None},
            {"status": "ranked", "duplicate_of": None},
            {"status": "duplicate", "duplicate_of": 1},
            {"status": "invalid", "duplicate_of": None},
            {"status": "duplicate after relaxation", "duplicate_of": 0},  # not a sample of 0
        ],
        "ranked": [
            {"sample_index": 0, "energy_per_atom": -5.00},
            {"sample_index": 1, "energy_per_atom": -4.99},
        ],
        "ranked_rmse": [None, 0.05],
    }
    study = _study()
    assert study.reranked_matches(search, 0.0) == [False, True]
    assert study.reranked_matches(search, 0.01) == [False, True]  # 0.01 ln 2 < 0.01 eV/atom
    assert study.reranked_matches(search, 0.02) == [True, False]  # 0.02 ln 2 > 0.01 eV/atom

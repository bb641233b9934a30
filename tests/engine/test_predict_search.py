"""``kldm predict --candidates`` (ranked search) and ``kldm evaluate csp --rank``, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.data.readers import load_dataset
from kldm_cli.evaluation.csp_run import evaluate_csp
from kldm_cli.evaluation.ranked import search_log_path
from kldm_cli.evaluation.search import SearchSettings
from kldm_cli.predict import predict

from .conftest import FIXTURES

DATA = FIXTURES / "perov5_small.csv"
BUNDLED_CSP = Path(__file__).resolve().parents[2] / "weights" / "kldm-csp-mp20"


def _formula() -> str:
    record = load_dataset(DATA, use_cache=False).records[0]
    return record.to_structure().composition.formula.replace(" ", "")


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


def test_a_seed_fixes_the_ranked_output(tmp_path, one_thread) -> None:
    pytest.importorskip("chgnet")
    search = SearchSettings(candidates=4, steps=20, screen=2, relax_steps=2)
    runs = [  # the bundled weights: a barely trained model gives cells of no volume
        predict(
            "NaCl",
            2,
            weights=str(BUNDLED_CSP),
            out=tmp_path / f"run{i}",
            seed=seed,
            search=search,
            threads=one_thread,
        )  # fmt: skip
        for i, seed in enumerate([3, 3, 4])
    ]
    first, again, other = (run.summary.read_text() for run in runs)
    assert first == again
    assert first != other
    assert len(list((tmp_path / "run0" / "candidates").glob("sample_*.cif"))) == 4
    assert 1 <= len(runs[0].ranked_files) <= 2
    assert all(path.name.startswith("rank_00") for path in runs[0].ranked_files)


def test_without_chgnet_the_search_is_refused_before_sampling(
    tiny_csp_model, tmp_path, monkeypatch
) -> None:
    import kldm_cli.predict as predict_module

    monkeypatch.setitem(sys.modules, "chgnet", None)
    monkeypatch.setitem(sys.modules, "chgnet.model", None)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled although CHGNet is missing")

    monkeypatch.setattr(predict_module, "sample_batches", no_sampling)
    runner = CliRunner()
    outcome = runner.invoke(
        app,
        ["predict", "--formula", _formula(), "-n", "2", "--candidates", "4",
         "--weights", str(tiny_csp_model), "--out", str(tmp_path / "p")],
    )  # fmt: skip
    assert outcome.exit_code == 1
    assert 'pip install "kldm-cli[relax]"' in outcome.output
    assert not (tmp_path / "p" / "candidates").exists()


def test_fewer_candidates_than_structures_is_refused(tiny_csp_model, tmp_path) -> None:
    outcome = CliRunner().invoke(
        app,
        ["predict", "--formula", _formula(), "-n", "5", "--candidates", "3",
         "--weights", str(tiny_csp_model), "--out", str(tmp_path / "p")],
    )  # fmt: skip
    assert outcome.exit_code == 2
    assert "--candidates" in outcome.output


class Interrupt(Exception):
    pass


def test_an_interrupted_ranked_evaluation_keeps_what_it_finished(
    tiny_csp_model, tmp_path, monkeypatch, one_thread
) -> None:
    pytest.importorskip("chgnet")
    import kldm_cli.evaluation.ranked as ranked

    out = tmp_path / "record.json"
    options = dict(
        weights=str(tiny_csp_model), k=3, limit=3, sampler="em", steps=3, workers=0,
        threads=one_thread, search=SearchSettings(candidates=3, screen=1, relax_steps=2),
    )  # fmt: skip
    real_search = ranked.search_structures
    calls = []

    def stop_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupt
        return real_search(*args, **kwargs)

    monkeypatch.setattr(ranked, "search_structures", stop_at_the_second)
    with pytest.raises(Interrupt):
        evaluate_csp(DATA, out=out, **options)
    lines = search_log_path(out).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["target"] == 0  # header + the first one

    calls.clear()
    monkeypatch.setattr(
        ranked, "search_structures", lambda *a, **k: calls.append(1) or real_search(*a, **k)
    )
    record = evaluate_csp(DATA, out=out, **options)
    assert len(calls) == 2  # only the two unfinished compositions
    assert not search_log_path(out).exists()
    metrics = record["ranked"]["metrics"]
    assert metrics["num_targets"] == 3
    top = [metrics[f"ranked_top_{n}"]["num_matched"] for n in (1, 3, 5)]
    assert top == sorted(top) and top[-1] <= 3
    assert metrics["raw_mr_at_1"]["num_matched"] <= metrics["raw_mr_at_k"]["num_matched"]
    assert json.loads(out.read_text())["ranked"]["settings"]["screen"] == 1
    for entry in record["per_target"]:  # what became of every candidate is in the record
        search = entry["search"]
        assert len(search["raw_rmse"]) == len(search["candidates"]) == 3
        relaxed = [c for c in search["candidates"] if c["status"] in ("ranked", "failed")]
        assert len(relaxed) <= 1  # --screen 1


@pytest.mark.parametrize("command", [("predict",), ("evaluate", "csp")])
def test_the_cli_defaults_are_the_search_settings_defaults(command) -> None:
    """The CLI writes the defaults as literals (kldm_cli.evaluation is not imported at start-up)."""
    import typer.main

    group = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]
    defaults = {param.name: param.default for param in group.params}
    settings = SearchSettings()
    assert defaults["screen"] == settings.screen
    assert defaults["relax_steps"] == settings.relax_steps
    assert defaults["frequency_weight"] == settings.frequency_weight
    if "fmax" in defaults:
        assert defaults["fmax"] == settings.fmax


def test_starting_the_cli_does_not_import_the_search() -> None:
    """Neither the search nor anything of the evaluation package is loaded by ``kldm --help``."""
    import subprocess

    code = (
        "import sys, kldm_cli.cli.main; "
        "print(sorted(m for m in sys.modules if m.startswith('kldm_cli.evaluation')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import kldm_cli.evaluation.search  # noqa: F401  (the path the check looks for exists)


def test_a_search_log_cut_mid_line_is_repaired_before_it_grows(tmp_path) -> None:
    from kldm_cli.evaluation.candidate_log import append_line
    from kldm_cli.evaluation.ranked import _read_log

    path = tmp_path / "record.json.search.jsonl"
    settings = {"screen": 5, "num_targets": 3}
    append_line(path, {"settings": settings})
    append_line(path, {"target": 0, "ranked": []})
    with path.open("a") as handle:
        handle.write('{"target": 1, "ran')  # the interruption cut this line short
    assert list(_read_log(path, settings)) == [0]
    append_line(path, {"target": 1, "ranked": []})
    assert list(_read_log(path, settings)) == [0, 1]
    with pytest.raises(ValueError, match="screen: 5 → 6"):
        _read_log(path, {**settings, "screen": 6})


def test_a_search_log_from_before_the_frequency_weight_resumes_at_weight_zero(tmp_path) -> None:
    from kldm_cli.evaluation.candidate_log import append_line
    from kldm_cli.evaluation.ranked import _read_log

    path = tmp_path / "record.json.search.jsonl"
    append_line(path, {"settings": {"screen": 5, "num_targets": 2}})
    append_line(path, {"target": 0, "ranked": []})
    settings = {"screen": 5, "num_targets": 2, "frequency_weight": 0.0}
    assert list(_read_log(path, settings)) == [0]
    with pytest.raises(ValueError, match="frequency_weight: 0.0 → 0.01"):
        _read_log(path, {**settings, "frequency_weight": 0.01})

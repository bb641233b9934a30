"""An interrupted ``kldm evaluate csp`` goes on where it stopped and draws what one run draws."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kldm_cli.data.readers import load_dataset
from kldm_cli.evaluation.candidate_log import log_path
from kldm_cli.evaluation.csp_run import evaluate_csp
from kldm_cli.sampling import load_model, sample_model

from .conftest import FIXTURES

DATA = FIXTURES / "perov5_small.csv"


def assert_same_structures(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert [s.specie for s in x] == [s.specie for s in y]
        np.testing.assert_array_equal(x.lattice.matrix, y.lattice.matrix)
        np.testing.assert_array_equal(x.frac_coords, y.frac_coords)


def test_done_batches_are_taken_and_the_others_drawn_as_in_one_run(tiny_csp_model) -> None:
    model = load_model(str(tiny_csp_model), "csp").model
    records = load_dataset(DATA, use_cache=False).records[:3]
    compositions = [list(r.atomic_numbers) for r in records]  # 5 atoms each (Perov-5)
    options = dict(method="em", steps=4, seed=3, batch_atoms=10)  # 2 crystals per batch
    batches: list[list[int]] = []
    full = sample_model(
        model, compositions, 2, on_batch=lambda i, s: batches.append(list(i)), **options
    )
    assert batches == [[0, 1], [2, 3], [4, 5]]
    flat = [s for candidates in full for s in candidates]

    done = {i: flat[i] for i in batches[0] + batches[2]}
    sampled: list[list[int]] = []
    resumed = sample_model(
        model, compositions, 2, done=done, on_batch=lambda i, s: sampled.append(list(i)), **options
    )
    assert sampled == [[2, 3]]  # only the missing batch is sampled
    assert_same_structures(flat, [s for candidates in resumed for s in candidates])


class Interrupt(Exception):
    pass


def run_until_interrupted(out, batches: int, **options):
    """Run ``evaluate_csp`` writing ``out`` and stop it after ``batches`` sampled batches;
    returns the path of its candidate log."""
    sampled = 0

    def progress(message: str) -> None:
        nonlocal sampled
        sampled += message.startswith("sampled")
        if sampled == batches:
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate_csp(DATA, out=out, progress=progress, **options)
    return log_path(out)


def one_crystal_per_batch(model, limit: int) -> dict:
    """Options of a short EM evaluation of ``limit`` 5-atom rows, one crystal per batch."""
    return dict(
        weights=str(model), limit=limit, sampler="em", steps=3, seed=0, batch_atoms=5, workers=0
    )


def test_interrupted_evaluation_resumes_from_its_candidate_log(tiny_csp_model, tmp_path) -> None:
    options = dict(
        weights=str(tiny_csp_model), k=2, limit=3, sampler="em", steps=4, seed=1,
        batch_atoms=10, threads=1, workers=0,
    )  # fmt: skip
    one_run = evaluate_csp(DATA, out=tmp_path / "one.json", **options)
    assert not log_path(tmp_path / "one.json").exists()  # removed with the record written

    out = tmp_path / "resumed.json"
    log = run_until_interrupted(out, 2, **options)
    assert not out.exists()
    lines = log.read_text().splitlines()
    assert len(lines) == 3  # the header and two batches of two candidates
    assert json.loads(lines[0])["settings"]["steps"] == 4

    messages: list[str] = []
    record = evaluate_csp(DATA, out=out, progress=messages.append, **options)
    assert any(m.startswith("resuming: 4 candidates") for m in messages)
    assert [m for m in messages if m.startswith("sampled")] == [
        m for m in messages if m.startswith("sampled 6/6")
    ]  # one batch left to sample
    assert record["inputs"]["resumed_candidates"] == 4
    assert not log_path(out).exists()
    for key in ("per_target", "metrics"):
        assert record[key] == one_run[key]


def test_log_of_other_settings_is_refused_naming_them(tiny_csp_model, tmp_path) -> None:
    options = one_crystal_per_batch(tiny_csp_model, limit=2)
    out = tmp_path / "run.json"
    log = run_until_interrupted(out, 1, **options)
    with pytest.raises(ValueError, match=r"steps: 3 → 5") as err:
        evaluate_csp(DATA, out=out, **{**options, "steps": 5})
    assert "delete the file" in str(err.value)
    assert log.exists()  # nothing thrown away


def test_torn_last_line_is_sampled_again(tiny_csp_model, tmp_path) -> None:
    options = one_crystal_per_batch(tiny_csp_model, limit=2)
    out = tmp_path / "run.json"
    log = run_until_interrupted(out, 2, **options)
    text = log.read_text()
    log.write_text(text[: len(text) - 40])  # the second batch's line cut short

    messages: list[str] = []
    record = evaluate_csp(DATA, out=out, progress=messages.append, **options)
    assert record["inputs"]["resumed_candidates"] == 1
    assert any(m.startswith("sampled 2/2") for m in messages)
    assert record["metrics"]["num_candidates"] == 2


def test_log_with_a_bad_middle_line_is_refused(tiny_csp_model, tmp_path) -> None:
    options = one_crystal_per_batch(tiny_csp_model, limit=3)
    out = tmp_path / "run.json"
    log = run_until_interrupted(out, 2, **options)
    header, first, second = log.read_text().splitlines()
    log.write_text("\n".join([header, first[:30], second]) + "\n")
    with pytest.raises(ValueError, match="line 2: not a batch of candidates"):
        evaluate_csp(DATA, out=out, **options)


@pytest.mark.parametrize("with_out", [True, False])
def test_ctrl_c_says_what_was_kept(tmp_path, monkeypatch, with_out: bool) -> None:
    from typer.testing import CliRunner

    import kldm_cli.evaluation.csp_run
    from kldm_cli.cli.main import app

    def interrupted(data, *, out, **options):
        if out is not None:
            log_path(out).write_text("{}\n")  # as if batches had been kept
        raise KeyboardInterrupt

    monkeypatch.setattr(kldm_cli.evaluation.csp_run, "evaluate_csp", interrupted)
    out = tmp_path / "csp.json"
    arguments = ["evaluate", "csp", "--data", str(DATA)] + (["--out", str(out)] if with_out else [])
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 130
    message = " ".join(result.output.split())
    if with_out:
        assert "run the same command to go on" in message
        assert "csp.json.partial.jsonl" in "".join(message.split())  # rich may wrap the path
    else:
        assert "nothing was kept (pass --out" in message

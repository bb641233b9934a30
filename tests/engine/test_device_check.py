"""The one-call GPU check (``benchmarks/device/run_check.py``), dry-run on the CPU with tiny sizes
so that the script cannot rot before a session is lent a GPU."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device" / "run_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("run_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("device-check")
    data = FIXTURES / "mp20_small.csv"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
         "--train", str(data), "--test", str(data)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_dry_run_runs_every_part(dry_run):
    _, results = dry_run
    parts = results["parts"]
    assert list(parts) == list(_load_script().PARTS)
    failed = {name: part for name, part in parts.items() if part["status"] != "ok"}
    assert not failed, json.dumps(failed, indent=1)[:3000]
    assert results["summary"] == {name: "ok" for name in parts}
    for part in parts.values():
        assert 0 < part["part_seconds"] <= part["budget_s"] + 20


@pytest.mark.slow
def test_dry_run_values(dry_run):
    parts = dry_run[1]["parts"]
    assert parts["env"]["cuda_available"] is False and parts["env"]["torch"]
    # The GPU variants (marked cuda) are collected and skipped on a CPU.
    assert parts["tests"]["counts"]["skipped"] >= 3 and parts["tests"]["returncode"] == 0
    assert "failed" not in parts["tests"]["counts"]
    for task in ("csp", "dng"):
        same = parts["same_samples"][task]
        # On a CPU the "device" run is the CPU run again: the samples must agree exactly.
        (comparison,) = same["comparisons"].values()
        assert comparison["crystals"] == 4
        assert comparison["max_abs_diff_frac_coords"] == 0.0
        assert comparison["max_abs_diff_lengths_angstrom"] == 0.0
        assert comparison["atom_type_mismatches"] == 0
    assert parts["generate_bundled"]["written"] == 4
    paper = parts["generate_paper"]
    assert paper["written"] == 4 and paper["seconds_per_step"] > 0
    evaluation = parts["evaluate_csp"]
    assert evaluation["fp32"]["metrics"]["num_targets"] == 3
    # The in-process (patched) path gives the command's matches on a CPU.
    assert evaluation["bf16"]["metrics"] == evaluation["fp32"]["metrics"]
    assert evaluation["comparison"]["difference_bf16_minus_fp32"] == 0
    assert evaluation["comparison"]["holds"] is True
    fp32_rows = [r for r in parts["train_throughput"]["rows"] if r["precision"] == "fp32"]
    assert fp32_rows and all(r["steps_per_s"] > 0 for r in fp32_rows)
    assert parts["ddp"]["backend"] == "gloo" and parts["ddp"]["logged_steps"] == 2
    smoke = parts["train_smoke"]
    assert smoke["stopped_by_sigint"] and smoke["returncode"] == 130 and smoke["steps"] > 0
    assert smoke["loss_first_fifth"] > 0 and smoke["loss_last_fifth"] > 0


@pytest.mark.slow
def test_dry_run_files_fit_the_device_tool(dry_run):
    """At most 8 files come back from a device run, named in letters, digits, '.', '_', '-'."""
    out, _ = dry_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "eval_csp_fp32.json" in names and "smoke-run/train_log.jsonl" in names


def test_paired_match_rates():
    paired = _load_script()._paired
    record = lambda matched: {  # noqa: E731
        "per_target": [{"matched": m} for m in matched],
        "metrics": {"match_rate": 0.0},
    }
    result = paired(record([True, True, False, False]), record([True, False, True, True]))
    assert result["matched_by_fp32_only"] == 1 and result["matched_by_bf16_only"] == 2
    assert result["difference_bf16_minus_fp32"] == pytest.approx(0.25)
    # d = (0, -1, 1, 1): variance 3/4 - 1/16 = 11/16, standard error sqrt(11/16 / 4)
    assert result["paired_standard_error"] == pytest.approx((11 / 64) ** 0.5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parts", "env,gpu"], "unknown parts ['gpu']"),
        (["--train", "no/such.csv"], "--train no/such.csv does not exist"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, args, message):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), *args],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "results.json").exists()


def test_a_part_past_its_budget_is_recorded_and_the_next_runs(tmp_path):
    data = FIXTURES / "mp20_small.csv"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path),
         "--parts", "tests,env", "--budget-scale", "0.001", "--train", str(data),
         "--test", str(data)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    parts = json.loads((tmp_path / "results.json").read_text())["parts"]
    # pytest is stopped after a second (the least a command gets), so the part fails...
    assert parts["tests"]["status"] == "failed" and parts["tests"]["timed_out"] is True
    # ...and the check goes on.
    assert parts["env"]["status"] == "ok"

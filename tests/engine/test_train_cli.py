"""``kldm train`` from the command line: CliRunner for the options, and the documented
``torchrun ... -m kldm_cli train`` launch (2 CPU processes)."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kldm_cli.cli.main import app

from .conftest import FIXTURES

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def _args(tmp_path, *extra):
    return [
        "train", "--data", str(FIXTURES / "perov5_small.csv"), "--out", str(tmp_path / "run"),
        "--preset", "tiny", "--batch-size", "4", "--log-every", "1", *extra,
    ]  # fmt: skip


def test_train_command_trains_and_reports(tmp_path):
    result = runner.invoke(app, _args(tmp_path, "--max-steps", "2", "--no-plot"))
    assert result.exit_code == 0, result.output
    assert "Done" in result.output and "2 steps" in result.output
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "training_curves.png").exists()
    result = runner.invoke(app, _args(tmp_path, "--max-steps", "3", "--no-plot"))
    assert result.exit_code == 0, result.output
    assert "Resuming" in result.output and "step 2" in result.output


def test_train_command_refuses_bad_options_cleanly(tmp_path, monkeypatch):
    import kldm_cli.training.precision as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)  # as on most CPUs
    cases = [
        (["--precision", "bf16"], "needs --device cuda or a CPU with native bf16"),
        (["--precision", "fp16"], "Unknown precision"),
        (["--val-sampler", "ode"], "Unknown validation sampler"),
        (["--val-every", "1"], "needs a validation set"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, _args(tmp_path, "--max-steps", "1", *extra))
        assert result.exit_code == 1, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_torchrun_launch_of_python_m_kldm_cli(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--log-dir", str(tmp_path / "torchrun-logs"), "-m", "kldm_cli",
        *_args(tmp_path, "--max-steps", "2", "--no-plot"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Done") == 1  # only rank 0 prints
    assert "2 processes × batch 4" in done.stdout
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]


def test_every_option_is_documented_in_training_md():
    import typer.main

    command = typer.main.get_command(app).commands["train"]
    documented = (FIXTURES.parents[1] / "docs" / "training.md").read_text()
    options = [name for param in command.params for name in param.opts if name != "--help"]
    assert options and [name for name in options if f"`{name}`" not in documented] == []

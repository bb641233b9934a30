"""One rule for the default CPU threads of every command (``kldm_cli.threads``)."""

import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.threads import default_threads, set_threads

runner = CliRunner()


def test_openmp_threads_sleep_while_waiting_unless_the_user_says_otherwise():
    """Spinning OpenMP threads made two threads ~20x slower than one beside a busy process."""
    code = "import os, kldm_cli, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr


@pytest.mark.parametrize(
    "work_atoms, cores, busy, expected",
    [
        (4, 2, 0, 1),  # NaCl x2: one thread, even on an idle machine
        (4096, 2, 0, 2),  # a full batch on an idle machine: every core
        (4096, 2, 1, 1),  # beside one busy process: the one free core
        (4096, 2, 5, 1),  # overloaded: still one
        (None, 8, 2, 6),  # training (large work): the free cores
        (1000, 8, 0, 3),  # one thread per 256 atoms
        (140, 2, 0, 1),  # LiFePO4 x20 on an idle machine: slower with 2 (docs/benchmarks.md)
    ],
)
def test_default_threads_rule(work_atoms, cores, busy, expected):
    assert default_threads(work_atoms, cores=cores, busy=busy) == expected


def test_set_threads_default_uses_the_rule():
    before = torch.get_num_threads()
    try:
        assert set_threads(None, work_atoms=4) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _threads_help(group, path=()):
    for name, command in getattr(group, "commands", {}).items():
        if hasattr(command, "commands"):
            yield from _threads_help(command, (*path, name))
            continue
        for param in command.params:
            if "--threads" in getattr(param, "opts", ()):
                yield " ".join((*path, name)), param.help


def test_every_command_documents_the_same_threads_default():
    import typer

    helps = dict(_threads_help(typer.main.get_command(app)))
    assert {"predict", "generate", "train", "evaluate csp"} <= set(helps)
    assert len(set(helps.values())) == 1, helps


def test_train_without_threads_uses_the_rule(monkeypatch, tmp_path):
    """``kldm train`` used torch's default (every logical core) instead of the shared rule."""
    import kldm_cli.threads as threads_module

    calls = []
    monkeypatch.setattr(threads_module, "default_threads", lambda *a, **k: calls.append(k) or 1)
    before = torch.get_num_threads()
    try:
        runner.invoke(
            app, ["train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m")]
        )
    finally:
        torch.set_num_threads(before)
    assert calls, "train did not ask kldm_cli.threads for its default"

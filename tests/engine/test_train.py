"""Training: outputs, exact resume, learning rate schedule, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

from kldm_cli.config import KLDMConfig
from kldm_cli.train import TrainOptions, learning_rate_at, train

from .conftest import FIXTURES


def _options(tmp_path, out, **kw):
    base = dict(
        data=FIXTURES / "perov5_small.csv", out=out, preset="tiny", batch_size=4,
        checkpoint_every=3, log_every=1, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    base.update(kw)
    return TrainOptions(**base)


def test_train_writes_model_folder_and_log(tmp_path):
    result = train(_options(tmp_path, tmp_path / "run", max_steps=4))
    out = result.out
    assert result.steps == 4
    config = KLDMConfig.load(out / "config.json")
    assert config.task == "csp" and config.lattice_stats.length_loc
    assert config.provenance["train_data_sha256"]
    assert sum(config.num_atoms_counts.values()) > 0
    weights = load_file(out / "model.safetensors")
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in log)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    straight = train(_options(tmp_path, tmp_path / "straight", max_steps=8)).out
    interrupted = tmp_path / "interrupted"
    train(_options(tmp_path, interrupted, max_steps=5))  # stops mid-epoch, checkpoint at 5
    train(_options(tmp_path, interrupted, max_steps=8))  # resumes from step 5
    a = load_file(straight / "checkpoint.safetensors")
    b = load_file(interrupted / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_resume_refuses_other_data(tmp_path):
    out = tmp_path / "run"
    train(_options(tmp_path, out, max_steps=2))
    with pytest.raises(ValueError, match="other data"):
        train(_options(tmp_path, out, max_steps=3, data=FIXTURES / "mp20_small.csv"))


def test_learning_rate_schedule():
    assert learning_rate_at(0, 1e-3, "constant", 0, 100) == 1e-3
    assert learning_rate_at(4, 1e-3, "cosine", 10, 100) == pytest.approx(5e-4)
    assert learning_rate_at(100, 1e-3, "cosine", 0, 100) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_at(0, 1e-3, "step", 0, 10)


def test_bad_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="task"):
        train(_options(tmp_path, tmp_path / "x", task="nope", max_steps=1))

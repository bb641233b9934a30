"""Small trained models shared by the engine tests (trained once per test session)."""

from pathlib import Path

import pytest

from kldm_cli.training import TrainOptions, train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _train_tiny(tmp_path_factory, task: str, types: str = "d") -> Path:
    root = tmp_path_factory.mktemp(f"model-{task}-{types}")
    options = TrainOptions(
        data=FIXTURES / "perov5_small.csv", out=root / "model", task=task, types=types,
        preset="tiny", batch_size=8, max_steps=6, checkpoint_every=3, log_every=2,
        cache_dir=root / "cache",
    )  # fmt: skip
    train(options)
    return options.out


@pytest.fixture(scope="session")
def tiny_csp_model(tmp_path_factory) -> Path:
    """A (barely) trained tiny CSP model folder on Perov-5 fixtures."""
    return _train_tiny(tmp_path_factory, "csp")


@pytest.fixture(scope="session")
def tiny_dng_model(tmp_path_factory) -> Path:
    """A (barely) trained tiny DNG model folder (masking types) on Perov-5 fixtures."""
    return _train_tiny(tmp_path_factory, "dng", "d")

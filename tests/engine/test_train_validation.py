"""Validation during training: loss and CSP match rate end to end, ``best/`` chosen by match
rate (ties by loss), best score kept across a resume."""

import json
from types import SimpleNamespace

import pytest
from pymatgen.core import Lattice, Structure

import kldm_cli.sampling
from kldm_cli.hub import read_card_metadata, read_model_folder
from kldm_cli.training import Trainer, TrainOptions, train
from kldm_cli.training.checkpoint import load_checkpoint

from .conftest import FIXTURES

pytestmark = pytest.mark.usefixtures("one_thread")


def _options(tmp_path, out, **kw):
    # 20 Perov-5 crystals, batch 8: 3 steps per epoch; validate every epoch on 4 of them.
    base = dict(
        data=FIXTURES / "perov5_small.csv", val=FIXTURES / "perov5_small.csv", out=out,
        preset="tiny", batch_size=8, checkpoint_every=100, log_every=1, val_every=1,
        val_subset=4, val_steps=5, val_workers=0, cache_dir=tmp_path / "cache", plot=False,
    )  # fmt: skip
    base.update(kw)
    return TrainOptions(**base)


def _val_records(out):
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "val_loss" in r]


def test_validation_end_to_end_writes_best(tmp_path):
    """Real sampler (EM, 5 steps) and real StructureMatcher: a match rate in [0, 1]."""
    out = tmp_path / "run"
    result = train(_options(tmp_path, out, epochs=1))
    (record,) = _val_records(out)
    assert record["step"] == 3 and record["epoch"] == 1
    assert record["val_loss"] > 0 and 0.0 <= record["val_match_rate"] <= 1.0
    assert record["best"] is True and result.best_val == record["val_match_rate"]
    read_model_folder(out / "best")
    assert read_card_metadata(out / "best")["library_name"] == "kldm"


def test_best_is_chosen_by_match_rate_and_survives_resume(tmp_path, monkeypatch):
    """Sampling is replaced by candidates that match a chosen share of the targets, so the
    match rate per validation is known: 0.5, 1.0, 0.25, then (after a resume) 0.75."""
    shares = iter([0.5, 1.0, 0.25, 0.75])

    trainers = []

    def fake_sample_model(model, compositions, num_samples, **kwargs):
        records = trainers[-1].val_records
        assert [r.atomic_numbers.tolist() for r in records] == compositions
        good = round(next(shares) * len(records))
        out = []
        for i, record in enumerate(records):
            structure = record.to_structure()
            if i >= good:  # a wrong but valid candidate: same volume, c stretched 3 times
                a, b, c, alpha, beta, gamma = structure.lattice.parameters
                f = 3 ** (-1 / 3)
                lattice = Lattice.from_parameters(a * f, b * f, 3 * c * f, alpha, beta, gamma)
                structure = Structure(lattice, structure.species, structure.frac_coords)
            out.append([structure])
        return out

    monkeypatch.setattr(kldm_cli.sampling, "sample_model", fake_sample_model)
    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        trainers.append(self)

    monkeypatch.setattr(Trainer, "__init__", init)

    out = tmp_path / "run"
    train(_options(tmp_path, out, epochs=3))
    rates = [r["val_match_rate"] for r in _val_records(out)]
    assert rates == [0.5, 1.0, 0.25]
    assert [r.get("best", False) for r in _val_records(out)] == [True, True, False]
    best_card = (out / "best" / "README.md").read_text()
    assert "- steps: 6" in best_card and "val_match_rate: 1.0" in best_card
    assert load_checkpoint(out / "checkpoint.safetensors")["trainer_state"]["best_val"] == 1.0

    train(_options(tmp_path, out, epochs=4))  # resumed: 0.75 does not beat the saved 1.0
    assert [r["val_match_rate"] for r in _val_records(out)] == [0.5, 1.0, 0.25, 0.75]
    assert not _val_records(out)[-1].get("best")
    assert "- steps: 6" in (out / "best" / "README.md").read_text()


@pytest.mark.parametrize(
    ("best_val", "best_loss", "match_rate", "loss", "better"),
    [
        (None, None, 0.0, 5.0, True),  # first validation
        (0.2, 1.0, 0.3, 9.0, True),  # higher match rate wins whatever the loss
        (0.2, 1.0, 0.1, 0.1, False),
        (0.0, 1.0, 0.0, 0.5, True),  # tie on match rate: lower loss wins
        (0.0, 1.0, 0.0, 2.0, False),
        (0.0, None, 0.0, 0.5, False),  # tie against an old checkpoint without the loss
        (-1.0, 1.0, None, 0.5, True),  # DNG: score is -loss
        (-1.0, 1.0, None, 2.0, False),
    ],
)
def test_best_selection_rule(best_val, best_loss, match_rate, loss, better):
    state = SimpleNamespace(best_val=best_val, best_val_loss=best_loss)
    assert Trainer._is_better(state, match_rate, loss) is better

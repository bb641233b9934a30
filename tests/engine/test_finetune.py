"""``kldm train --init-from``: fine-tuning starts from another model's weights."""

from __future__ import annotations

import pytest
import torch

from kldm_cli.config import KLDMConfig
from kldm_cli.hub import ModelLoadError, read_model_folder
from kldm_cli.training import Trainer, TrainOptions

from .conftest import FIXTURES


def _options(tmp_path, **changes) -> TrainOptions:
    options = dict(
        data=FIXTURES / "perov5_small.csv", out=tmp_path / "tuned", task="csp", preset="small",
        batch_size=4, max_steps=1, checkpoint_every=1, log_every=1, cache_dir=tmp_path / "cache",
        plot=False,
    )  # fmt: skip
    return TrainOptions(**{**options, **changes})


def test_the_run_starts_from_the_initial_weights_with_its_network(tiny_csp_model, tmp_path):
    trainer = Trainer(_options(tmp_path, init_from=tiny_csp_model))
    init_config, init_state = read_model_folder(tiny_csp_model)
    assert trainer.config.network == init_config.network  # not the "small" preset asked for
    assert trainer.config.elements == init_config.elements
    for name, tensor in trainer.network.state_dict().items():
        torch.testing.assert_close(tensor, init_state[name].to(tensor.dtype), rtol=0, atol=0)
    # lattice statistics and atom counts are the new data's
    records = trainer.records
    assert trainer.config.max_atoms == max(r.num_atoms for r in records)
    assert sum(trainer.config.num_atoms_counts.values()) == len(records)
    assert set(trainer.config.elements) >= {int(z) for r in records for z in r.atomic_numbers}
    assert trainer.config.provenance["init_from"] == str(tiny_csp_model)
    assert len(trainer.config.provenance["init_from_sha256"]) == 64
    saved = KLDMConfig.load(tmp_path / "tuned" / "config.json")
    assert saved.provenance["init_from"] == str(tiny_csp_model)


def test_structures_with_elements_the_model_never_saw_are_left_out(tiny_csp_model, tmp_path):
    import pandas as pd

    perov = pd.read_csv(FIXTURES / "perov5_small.csv")[["cif"]]
    mp20 = pd.read_csv(FIXTURES / "mp20_small.csv")[["cif"]]
    known = set(KLDMConfig.load(tiny_csp_model / "config.json").elements)
    trainer = Trainer(_options(tmp_path))  # no --init-from: every row is used
    mixed = tmp_path / "mixed.csv"
    pd.concat([perov, mp20]).to_csv(mixed, index=False)
    plain = Trainer(_options(tmp_path / "plain", data=mixed))
    tuned = Trainer(_options(tmp_path / "tuned", data=mixed, init_from=tiny_csp_model))
    unknown = [r for r in plain.records if not {int(z) for z in r.atomic_numbers} <= known]
    assert unknown and len(trainer.records) == len(perov)
    assert len(tuned.records) == len(plain.records) - len(unknown)
    assert any("left out" in note for note in tuned.notes)


def test_a_model_of_the_other_task_is_refused(tiny_dng_model, tmp_path):
    with pytest.raises(ValueError, match="DNG model"):
        Trainer(_options(tmp_path, init_from=tiny_dng_model))


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="missing"):
        Trainer(_options(tmp_path, init_from=tmp_path / "empty"))

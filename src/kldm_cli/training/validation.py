"""Validation during training: a fixed subset of the validation set, the EMA model's loss on
it and (CSP) the match rate of one sample per structure."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kldm_cli.config import KLDMConfig
from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.records import CrystalRecord
from kldm_cli.model import KLDM

#: Seed of the validation subset and of the validation noise: fixed, so scores are comparable.
VAL_SEED = 12345


def select_val_records(
    records: Sequence[CrystalRecord], config: KLDMConfig, subset: int, notes: list[str]
) -> list[CrystalRecord]:
    """A fixed subset (``subset`` structures, seed :data:`VAL_SEED`) of ``records``, restricted
    to the elements and atom counts the model knows (the others are counted in ``notes``)."""
    known = set(config.elements)
    usable = [
        r
        for r in records
        if r.num_atoms <= config.max_atoms and {int(z) for z in r.atomic_numbers} <= known
    ]
    if len(usable) < len(records):
        notes.append(
            f"validation: {len(records) - len(usable)} of {len(records)} structures left out "
            f"(elements unknown to the model or more than {config.max_atoms} atoms)"
        )
    if subset < len(usable):
        generator = torch.Generator().manual_seed(VAL_SEED)
        chosen = torch.randperm(len(usable), generator=generator)[:subset]
        usable = [usable[i] for i in sorted(chosen.tolist())]
    return usable


@torch.no_grad()
def validation_loss(
    model: KLDM, records: Sequence[CrystalRecord], batch_size: int, device: torch.device
) -> float:
    """``model``'s loss on ``records``, averaged per structure, with a fixed noise seed."""
    generator = torch.Generator(device=device).manual_seed(VAL_SEED)
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        batch = CrystalBatch.from_records(chunk).to(device)
        total += float(model.loss(batch, generator=generator).total) * len(chunk)
        count += len(chunk)
    return total / max(count, 1)


def validation_match_rate(
    model: KLDM,
    records: Sequence[CrystalRecord],
    sampler: str,
    steps: int,
    workers: int,
    device: torch.device,
) -> float:
    """Match rate of one sample of ``model`` per structure of ``records`` (CSP only):
    ``sampler`` with ``steps`` steps, seed 0, matched with the CSP StructureMatcher settings in
    ``workers`` processes (30 s limit per pair; 0: in this process, no limit)."""
    from kldm_cli.evaluation.metrics.csp import match_structures
    from kldm_cli.sampling import sample_model

    compositions = [r.atomic_numbers.tolist() for r in records]
    candidates = sample_model(
        model, compositions, 1, method=sampler, steps=steps, seed=0, device=str(device)
    )
    targets = [r.to_structure() for r in records]
    return match_structures(candidates, targets, workers=workers).match_rate

"""`torchrun --nproc-per-node K kldm generate`: the batches are dealt over the ranks; tested with 2
Gloo processes on CPU, launched as torchrun would (``RANK``/``WORLD_SIZE``/``MASTER_*``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from kldm_cli.generate import generate
from kldm_cli.sampling.shards import Shard, shard_from_env

from .processes import free_port, join_or_fail

WORLD_SIZE = 2
#: 7 crystals of 5 atoms, 10 atoms per batch: batches [0, 1], [2, 3], [4, 5], [6] → rank 0 samples
#: batches 0 and 2, rank 1 batches 1 and 3.
OPTIONS = dict(n=7, steps=2, seed=3, batch_atoms=10, threads=1)


def _worker(rank: int, weights: str, out: str, port: int, resume: bool, report: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )  # fmt: skip
    result = generate(weights=weights, out=Path(out), resume=resume, **OPTIONS)
    Path(report, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "written": sorted(int(p.stem.split("_")[1]) for p in result.files),
                "all": len(result.all_structures),
                "other_ranks": len(result.other_ranks),
            }
        )
    )


def _run_two_ranks(weights: Path, out: Path, report: Path, resume: bool = False) -> list[dict]:
    report.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        _worker, args=(str(weights), str(out), free_port(), resume, str(report)),
        nprocs=WORLD_SIZE, join=False, start_method="spawn",
    )  # fmt: skip
    join_or_fail(context, "sharded generation")
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.cif"))}


def test_two_ranks_write_the_one_process_files_each_index_once_and_resume(tiny_dng_model, tmp_path):
    single = tmp_path / "single"
    generate(weights=str(tiny_dng_model), out=single, **OPTIONS)

    sharded = tmp_path / "sharded"
    ranks = _run_two_ranks(tiny_dng_model, sharded, tmp_path / "report1")
    assert ranks[0]["written"] == [0, 1, 4, 5] and ranks[1]["written"] == [2, 3, 6]
    assert ranks[0]["all"] == 7 and ranks[0]["other_ranks"] == 3  # rank 0 sees the whole run
    assert _files(sharded) == _files(single)  # byte-identical, sample by sample

    # An interrupted run: batch [2, 3] (rank 1's) and sample 5 (half of rank 0's [4, 5]) lost.
    for index in (2, 3, 5):
        (sharded / f"sample_{index:05d}.cif").unlink()
    ranks = _run_two_ranks(tiny_dng_model, sharded, tmp_path / "report2", resume=True)
    assert ranks[0]["written"] == [5] and ranks[1]["written"] == [2, 3]
    assert ranks[0]["all"] == 7
    assert _files(sharded) == _files(single)


def test_shards_deal_batches_round_robin():
    shards = [Shard(rank, 3) for rank in range(3)]
    owners = [[s.rank for s in shards if s.owns(batch)] for batch in range(7)]
    assert owners == [[0], [1], [2], [0], [1], [2], [0]]
    assert Shard().owns(5) and Shard().is_main


def test_shard_from_env():
    assert shard_from_env({}) == Shard()
    assert shard_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Shard(2, 4, 0)
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        shard_from_env({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ValueError, match="launch with torchrun"):
        shard_from_env({"WORLD_SIZE": "2"})


def test_extxyz_is_refused_under_torchrun(tiny_dng_model, tmp_path):
    with pytest.raises(ValueError, match="--format cif"):
        generate(3, weights=str(tiny_dng_model), out=tmp_path, fmt="extxyz", shard=Shard(0, 2))

"""Multi-process training (DDP) on CPU: 2 processes over Gloo, launched as torchrun would
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` in the environment)."""

import gc
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from kldm_cli.training import Trainer, TrainOptions, distributed_from_env
from kldm_cli.training.dataset import shard_order, steps_per_epoch

from .conftest import FIXTURES
from .processes import free_port, join_or_fail

WORLD_SIZE = 2


def _options(root, out, **kw):
    # 20 Perov-5 crystals, 2 ranks × batch 4: 10 per shard, 3 steps per epoch (4, 4, 2 each).
    base = dict(
        data=FIXTURES / "perov5_small.csv", out=root / out, preset="tiny", batch_size=4,
        checkpoint_every=2, log_every=1, cache_dir=root / "cache", plot=False,
    )  # fmt: skip
    base.update(kw)
    return TrainOptions(**base)


def _live_ddp_wrappers() -> int:
    from torch.nn.parallel import DistributedDataParallel

    return sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())


def _worker(rank: int, root, ports) -> None:
    """Three runs per rank: 5 straight steps; stopped at step 2 by rank 1 alone; resumed to 5."""
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE)
    )

    os.environ["MASTER_PORT"] = str(ports[0])
    trainer = Trainer(_options(root, "straight", max_steps=5))
    result = trainer.run()
    assert result.steps == 5 and result.epochs == 1 and not result.interrupted
    save_file(trainer.network.state_dict(), str(root / f"weights-rank{rank}.safetensors"))
    (root / f"last-loss-rank{rank}.json").write_text(json.dumps(result.last_loss))

    os.environ["MASTER_PORT"] = str(ports[1])
    trainer = Trainer(_options(root, "resumed", max_steps=5))
    if rank == 1:  # a stop signal reaching one rank only must stop both at the same step
        train_step = trainer._train_step

        def step_then_stop(batch):
            out = train_step(batch)
            if trainer.step == 2:
                trainer.request_stop()
            return out

        trainer._train_step = step_then_stop
    result = trainer.run()
    assert result.interrupted and result.steps == 2, result
    # The trainer lives on (on rank 1 in a reference cycle, through step_then_stop), but the
    # DDP wrapper, which holds the destroyed process group, must not: a group freed late, at
    # interpreter exit, aborts the process.
    assert _live_ddp_wrappers() == 0

    os.environ["MASTER_PORT"] = str(ports[2])
    trainer = Trainer(_options(root, "resumed", max_steps=5))
    assert trainer.resumed and trainer.step == 2 and not trainer.notes, trainer.notes
    assert trainer.run().steps == 5


def test_two_process_training_keeps_ranks_identical_and_resumes_exactly(tmp_path):
    context = mp.start_processes(
        _worker, args=(tmp_path, [free_port() for _ in range(3)]), nprocs=WORLD_SIZE,
        join=False, start_method="spawn",
    )  # fmt: skip
    join_or_fail(context, "DDP training")

    # All-reduced gradients: the ranks trained on different data and noise yet hold the same
    # weights, which are also the ones rank 0 checkpointed.
    rank0 = load_file(tmp_path / "weights-rank0.safetensors")
    rank1 = load_file(tmp_path / "weights-rank1.safetensors")
    checkpoint = load_file(tmp_path / "straight" / "checkpoint.safetensors")
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(rank0[name], checkpoint[f"model.{name}"], rtol=0, atol=0)
    assert not torch.equal(checkpoint["rng.noise.rank0"], checkpoint["rng.noise.rank1"])

    # Rank 0 alone wrote one model folder and one log.
    straight = tmp_path / "straight"
    assert sorted(p.name for p in straight.iterdir()) == [
        "README.md", "checkpoint.safetensors", "config.json", "model.safetensors",
        "train_log.jsonl",
    ]  # fmt: skip
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5]
    # The logged loss is the mean over ranks of their own batch losses (which differ).
    last = [json.loads((tmp_path / f"last-loss-rank{r}.json").read_text()) for r in range(2)]
    assert last[0] != last[1]
    assert log[-1]["loss"] == pytest.approx(sum(last) / 2, rel=1e-6)
    assert "4 per process × 2" in (straight / "README.md").read_text()

    # Stopped by one rank at step 2, resumed: bit-identical to the straight run (data shards
    # and per-rank noise generators restored).
    resumed = load_file(tmp_path / "resumed" / "checkpoint.safetensors")
    assert resumed.keys() == checkpoint.keys()
    for name in checkpoint:
        torch.testing.assert_close(resumed[name], checkpoint[name], rtol=0, atol=0, msg=name)


def test_shards_are_disjoint_and_cover_the_epoch():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shard_order(order, 0, 1), order)
    shards = [shard_order(order, rank, 2) for rank in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    # Batch p of every rank together = chunk p of the order (batch 2 per rank).
    assert sorted(torch.cat([s[2:4] for s in shards]).tolist()) == sorted(order[4:8].tolist())
    shards = [shard_order(order, rank, 4) for rank in range(4)]  # 10 -> padded to 12
    assert {len(s) for s in shards} == {3}
    assert set(torch.cat(shards).tolist()) == set(range(10))
    assert steps_per_epoch(10, 2, 4) == 2 and steps_per_epoch(10, 4, 1) == 3
    assert steps_per_epoch(3, 8, 4) == 1  # fewer crystals than ranks: padding, one step


def test_launch_environment():
    assert distributed_from_env({}) is None
    info = distributed_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (3, 1, 4, False)
    assert distributed_from_env({"WORLD_SIZE": "2", "RANK": "0"}).local_rank == 0
    with pytest.raises(ValueError, match="torchrun"):
        distributed_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="inconsistent"):
        distributed_from_env({"WORLD_SIZE": "2", "RANK": "2"})

"""Training checkpoints: model, EMA, optimizer and RNG state in one safetensors file.

Nothing is pickled: tensors go into safetensors, everything else (step counters, optimizer
hyper-parameters, trainer state) into the file's string metadata as JSON. The file is written
to a temporary name and renamed, so an interrupted write never leaves a half checkpoint.

Tensor names: ``model.<param>``, ``ema.<param>``, ``optim.<index>.<key>``, ``rng.noise`` (the
noise generator of rank 0, i.e. of a single-process run) and, for a multi-process (DDP) run,
``rng.noise.rank<r>`` for every rank ``r``. Files without the per-rank entries (single-process
runs, or runs written by kldm before DDP support) load with ``rng_ranks == []``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from kldm_cli.fileio import respect_umask


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], str]:
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def _optimizer_state(tensors: dict[str, Tensor], meta: str) -> dict[str, Any]:
    info = json.loads(meta)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in info["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    path: Path,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    rng_state: Tensor,
    trainer_state: dict[str, Any],
    *,
    rank_rng_states: Sequence[Tensor] = (),
) -> None:
    """Write a resumable checkpoint atomically.

    ``rng_state`` is the noise generator state of rank 0; ``rank_rng_states`` optionally holds
    the states of all ranks of a multi-process run (index = rank).
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema_state.items()})
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.noise"] = rng_state.cpu()
    for rank, state in enumerate(rank_rng_states):
        tensors[f"rng.noise.rank{rank}"] = state.cpu()
    metadata = {"trainer_state": json.dumps(trainer_state), "optimizer": optim_meta}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    respect_umask(tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns a dict with ``model``, ``ema`` (state dicts), ``optimizer`` (an optimizer
    state dict), ``rng`` (generator state of rank 0), ``rng_ranks`` (per-rank generator states
    of a multi-process run, index = rank; empty if none were saved) and ``trainer_state``.
    """
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"checkpoint {path} is unreadable ({err}); delete it to start over"
        ) from err
    if "trainer_state" not in metadata:
        raise ValueError(f"checkpoint {path} has no trainer state; delete it to start over")

    if "rng.noise" not in tensors:
        raise ValueError(f"checkpoint {path} has no noise generator state; delete it to start over")
    rank_keys = [k for k in tensors if k.startswith("rng.noise.rank")]
    if sorted(rank_keys) != sorted(f"rng.noise.rank{r}" for r in range(len(rank_keys))):
        raise ValueError(f"checkpoint {path} has incomplete per-rank generator states {rank_keys}")

    def strip(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    return {
        "model": strip("model."),
        "ema": strip("ema."),
        "optimizer": _optimizer_state(tensors, metadata["optimizer"]),
        "rng": tensors["rng.noise"],
        "rng_ranks": [tensors[f"rng.noise.rank{rank}"] for rank in range(len(rank_keys))],
        "trainer_state": json.loads(metadata["trainer_state"]),
    }

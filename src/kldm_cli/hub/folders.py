"""Model folders: ``model.safetensors`` + ``config.json`` + ``README.md``, written atomically and
read with checks that name the offending file; nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kldm_cli.config import KLDMConfig

if TYPE_CHECKING:  # torch is imported only where tensors are handled: `kldm weights` starts fast
    import torch
    from torch import Tensor

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
#: The files of a model folder; only these are downloaded from a Hub repository.
MODEL_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
#: Largest safetensors header accepted (the format's own limit is 100 MB).
_MAX_HEADER_BYTES = 100_000_000


class ModelLoadError(ValueError):
    """A model folder or its weights could not be obtained or read; the message names the file."""


def write_model_folder(
    out_dir: str | Path, state_dict: Mapping[str, Tensor], config: KLDMConfig, card: str
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``out_dir``.

    Each file is written to a temporary name in ``out_dir`` and renamed, so a reader never sees a
    half-written file. Tensors are saved detached, contiguous and on the CPU. Returns ``out_dir``.
    """
    if not isinstance(config, KLDMConfig):
        raise TypeError(f"config must be a KLDMConfig, got {type(config).__name__}")
    if not state_dict:
        raise ValueError("state_dict is empty: nothing to save")
    import torch

    bad = [name for name, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ValueError(f"state_dict entries that are not tensors: {bad[:5]}")
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share memory (tied or sliced parameters).
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state_dict.items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(save(tensors, metadata={"format": "pt"}))
    with atomic_path(out / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    with atomic_path(out / CARD_NAME) as tmp:
        tmp.write_text(card if card.endswith("\n") else card + "\n", encoding="utf-8")
    return out


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is synced and renamed to it."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_model_folder(path: str | Path) -> tuple[KLDMConfig, dict[str, Tensor]]:
    """Read a model folder: its config and its weights (``{name: tensor}`` on the CPU).

    Raises :class:`ModelLoadError` naming the file when the folder or a file is missing, the
    weights are truncated or not safetensors, or ``config.json`` is not JSON, not a kldm config,
    or from a newer kldm.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a model folder (expected a directory)")
    weights_path, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for required in (weights_path, config_path):
        if not required.is_file():
            raise ModelLoadError(
                f"{required}: missing; a model folder holds {WEIGHTS_NAME} and {CONFIG_NAME}"
            )
    config = _read_config(config_path)
    return config, read_safetensors(weights_path)


def _read_config(path: Path) -> KLDMConfig:
    try:
        return KLDMConfig.load(path)
    except (ValueError, AttributeError, OSError) as err:
        # KLDMConfig.load raises ValueError for non-JSON, non-config and newer-format files;
        # AttributeError when the JSON is not an object.
        message = str(err)
        if str(path) not in message:
            message = f"{path}: {message}"
        raise ModelLoadError(message) from err


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Load a safetensors file after checking its header; errors name the file."""
    from safetensors.torch import load_file

    path = Path(path)
    _check_safetensors_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        raise ModelLoadError(f"{path}: corrupt safetensors file ({err})") from err
    if not tensors:
        raise ModelLoadError(f"{path}: contains no tensors")
    return tensors


def _check_safetensors_header(path: Path) -> None:
    """Verify the 8-byte header length, the JSON header and that every tensor's bytes exist."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        header_len = int.from_bytes(prefix, "little")
        if header_len == 0 or header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise ModelLoadError(
                f"{path}: truncated or not a safetensors file (header of {header_len} bytes "
                f"announced, file has {size} bytes)"
            )
        raw_header = handle.read(header_len)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_bytes = size - 8 - header_len
    needed = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise ModelLoadError(f"{path}: corrupt safetensors header (tensor {name!r})")
        needed = max(needed, offsets[1])
    if needed > data_bytes:
        raise ModelLoadError(
            f"{path}: truncated: its tensors need {needed} bytes of data, the file has {data_bytes}"
        )


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: Mapping[str, Tensor], source: str
) -> None:
    """Load ``state_dict`` into ``module``; a missing, unexpected or mis-shaped tensor is an error.

    ``source`` (a file or release name) is named in the error, which lists the first few
    offending tensor names. Nothing is loaded unless everything matches.
    """
    expected = module.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    mismatched = [
        f"{name} {list(state_dict[name].shape)} (model expects {list(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state_dict and state_dict[name].shape != tensor.shape
    ]
    problems = [
        f"{len(items)} {label}: {', '.join(items[:5])}{', …' if len(items) > 5 else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with the wrong shape", mismatched),
        )
        if items
    ]
    if problems:
        raise ModelLoadError(
            f"{source}: weights do not fit the model built from its config.json; tensors "
            + "; ".join(problems)
        )
    module.load_state_dict(dict(state_dict), strict=True)


def is_complete_folder(folder: Path) -> bool:
    return (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()


def read_card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card (``README.md`` or its folder); ``{}`` if none.

    kldm's own keys are ``task``, ``kldm_metrics`` (a mapping of headline metric -> value) and
    ``kldm_metrics_command`` (the command that measured them); see ``weights/README.md``.
    """
    from huggingface_hub import metadata_load

    card = Path(path)
    if card.is_dir():
        card = card / CARD_NAME
    if not card.is_file():
        return {}
    try:
        return metadata_load(card) or {}
    except Exception as err:  # yaml.YAMLError, ValueError (front matter is not a mapping)
        raise ModelLoadError(f"{card}: unreadable YAML front matter ({err})") from err


def card_metrics(path: str | Path) -> dict[str, Any]:
    """The ``kldm_metrics`` block of a model card, ``{}`` when absent."""
    metrics = read_card_metadata(path).get("kldm_metrics")
    return dict(metrics) if isinstance(metrics, dict) else {}


def check_model_folder(path: str | Path) -> KLDMConfig:
    """Check that a model folder loads: ``config.json`` builds a model, ``model.safetensors``
    fits it strictly (every tensor present, none extra, right shapes, all finite), and the card's
    front matter, if there is a card, is readable YAML naming the same task.

    Returns the config; raises :class:`ModelLoadError` naming the offending file.
    """
    import torch

    from kldm_cli.model import KLDM

    folder = Path(path)
    config, state_dict = read_model_folder(folder)
    weights = str(folder / WEIGHTS_NAME)
    try:
        model = KLDM(config)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: cannot build the model ({err})") from err
    load_state_dict_strict(model.network, state_dict, weights)
    not_finite = [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if not_finite:
        raise ModelLoadError(f"{weights}: NaN or infinite values in {', '.join(not_finite[:5])}")
    card_task = read_card_metadata(folder).get("task")
    if card_task is not None and card_task != config.task:
        raise ModelLoadError(
            f"{folder / CARD_NAME}: the card says task {card_task!r}, config.json {config.task!r}"
        )
    return config


def write_missing_card(folder: str | Path, config: KLDMConfig) -> Path | None:
    """Write ``README.md`` from the run's metadata when the folder has none; returns its path.

    The card is :func:`kldm_cli.training.model_card` of ``config`` (task, data and its sha256 from
    ``provenance``, network) and of the last step/epoch in ``train_log.jsonl`` if there is one.
    Returns ``None`` (and writes nothing) when a card exists.
    """
    from kldm_cli.training import LOG_NAME, model_card, read_training_log

    folder = Path(folder)
    card_path = folder / CARD_NAME
    if card_path.exists():
        return None
    summary: dict[str, Any] = {}
    log = folder / LOG_NAME
    records = read_training_log(log) if log.is_file() else []
    if records:
        summary = {"steps": records[-1]["step"], "epochs": records[-1].get("epoch", "?")}
    card = model_card(config, summary)
    try:
        with atomic_path(card_path) as tmp:
            tmp.write_text(card, encoding="utf-8")
    except OSError as err:
        raise ModelLoadError(f"{card_path}: missing, and it cannot be written ({err})") from err
    return card_path

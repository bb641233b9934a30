"""What ``kldm train`` can be told (:class:`TrainOptions`), what it returns, and the model
config derived from the options and the training set (:func:`build_config`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kldm_cli import __version__
from kldm_cli.config import KLDMConfig, NetworkConfig, TrainConfig, TypeDiffusionConfig
from kldm_cli.data.lattice import fit_lattice_stats
from kldm_cli.data.records import CrystalRecord
from kldm_cli.training.schedule import learning_rate_at

CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "train_log.jsonl"
PLOT_NAME = "training_curves.png"
PRECISIONS = ("fp32", "bf16")
VAL_SAMPLERS = ("em", "pc")


@dataclass
class TrainOptions:
    """Everything ``kldm train`` can be told (see its ``--help``)."""

    data: Path
    out: Path
    val: Path | None = None
    task: str = "csp"
    preset: str = "small"
    types: str = "d"
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 256  # per process
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    #: Step where the cosine decay starts (0: at the end of the warm-up); constant before it.
    decay_start: int = 0
    seed: int = 42
    device: str = "cpu"
    precision: str = "fp32"
    checkpoint_every: int = 500
    log_every: int = 25
    val_every: int = 0
    val_subset: int = 64
    val_steps: int = 100
    val_sampler: str = "em"
    val_workers: int = 2
    max_atoms: int | None = None
    cache_dir: Path | None = None
    plot: bool = True
    #: Model folder whose network weights start the run (fine-tuning); its network size and
    #: element list are kept, lattice statistics and atom counts are fitted on the new data.
    init_from: Path | None = None
    network_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    out: Path
    steps: int
    epochs: int
    seconds: float
    #: Loss of the last step (this process's batch under DDP; the log holds rank averages).
    last_loss: float
    best_val: float | None
    #: True when the run stopped early on SIGINT/SIGTERM (a checkpoint was written first).
    interrupted: bool = False


def check_options(options: TrainOptions) -> None:
    """Refuse option values that cannot work, before any data is read."""
    if options.precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {options.precision!r}; choose fp32 or bf16")
    if options.val_sampler not in VAL_SAMPLERS:
        raise ValueError(f"Unknown validation sampler {options.val_sampler!r}; choose em or pc")
    for name in ("batch_size", "checkpoint_every", "log_every", "epochs"):
        if getattr(options, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(options, name)}")
    if options.max_steps is not None and options.max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {options.max_steps}")
    for name in (
        "val_every", "val_subset", "val_steps", "val_workers", "warmup_steps", "decay_start"
    ):  # fmt: skip
        if getattr(options, name) < 0:
            raise ValueError(f"{name} must be non-negative, got {getattr(options, name)}")
    if options.decay_start and options.lr_schedule != "cosine":
        raise ValueError("--decay-start needs --lr-schedule cosine")
    if options.decay_start and options.max_steps and options.decay_start >= options.max_steps:
        raise ValueError(
            f"--decay-start {options.decay_start} must be below --max-steps {options.max_steps}"
        )
    if options.val_every and options.val is None:
        raise ValueError("--val-every needs a validation set (--val)")
    learning_rate_at(0, options.learning_rate, options.lr_schedule, 0, 1)  # checks the name


def command_line(options: TrainOptions, world_size: int = 1) -> str:
    """The ``kldm train`` command that these options stand for (defaults left out)."""
    defaults = TrainOptions(data=options.data, out=options.out)
    flags = {
        "task": "--task", "preset": "--preset", "epochs": "--epochs", "max_steps": "--max-steps",
        "batch_size": "--batch-size", "learning_rate": "--lr", "lr_schedule": "--lr-schedule",
        "warmup_steps": "--warmup-steps", "decay_start": "--decay-start", "seed": "--seed",
        "device": "--device", "precision": "--precision", "max_atoms": "--max-atoms",
        "init_from": "--init-from",
    }  # fmt: skip
    if options.task == "dng":
        flags["types"] = "--types"
    parts = ["kldm train", f"--data {options.data}", f"--out {options.out}"]
    parts += [
        f"{flag} {getattr(options, name)}"
        for name, flag in flags.items()
        if getattr(options, name) != getattr(defaults, name) or name in ("task", "preset")
    ]
    if world_size > 1:
        parts[0] = f"torchrun --nproc_per_node {world_size} -m kldm_cli train"
    return " ".join(parts)


# ---------------------------------------------------------------------- configuration
def build_config(
    options: TrainOptions,
    records: Sequence[CrystalRecord],
    data_hash: str,
    init: KLDMConfig | None = None,
    init_sha256: str | None = None,
) -> KLDMConfig:
    """Derive the model config from the options and the training set.

    With ``init`` (the config of the model a fine-tuning run starts from) the network, the atom
    types and the element list are the initial model's, so its weights fit; lattice statistics,
    atom counts and ``max_atoms`` come from ``records``.
    """
    if options.task not in ("csp", "dng"):
        raise ValueError(f"Unknown task {options.task!r}; choose 'csp' or 'dng'")
    if init is not None:
        config = build_config(options, records, data_hash)
        return replace(
            config,
            network=init.network,
            types=init.types,
            elements=list(init.elements),
            train=replace(config.train, ema_decay=init.train.ema_decay),
            provenance={
                **config.provenance,
                "preset": init.provenance.get("preset"),
                "init_from": str(options.init_from),
                "init_from_sha256": init_sha256,
            },
        )
    elements = sorted({int(z) for record in records for z in record.atomic_numbers})
    counts = Counter(int(record.num_atoms) for record in records)
    types = None
    if options.task == "dng":
        if options.types not in ("c", "c-ab", "d"):
            raise ValueError(f"Unknown atom-type modality {options.types!r}; choose c, c-ab or d")
        types = TypeDiffusionConfig(modality=options.types)  # type: ignore[arg-type]
    network = NetworkConfig.preset(options.preset, **options.network_overrides)
    train_cfg = TrainConfig(
        learning_rate=options.learning_rate, batch_size=options.batch_size, seed=options.seed
    )
    config = KLDMConfig(
        task=options.task,  # type: ignore[arg-type]
        network=network,
        types=types,
        lattice_stats=fit_lattice_stats(records),
        elements=elements,
        num_atoms_counts=dict(sorted(counts.items())),
        max_atoms=options.max_atoms or max(counts),
        train=train_cfg,
        provenance={
            "kldm_version": __version__,
            "train_data": str(options.data),
            "train_data_sha256": data_hash,
            "preset": options.preset,
        },
    )
    return _with_network_io(config)


def _with_network_io(config: KLDMConfig) -> KLDMConfig:
    """Set the network's input/output widths from the task and vocabulary."""
    if config.task == "csp":
        io = dict(node_input_dim=len(config.elements), type_output_dim=0)
    else:
        from kldm_cli.diffusion.atom_types import make_type_process

        process = make_type_process(config.types, num_classes=len(config.elements))
        io = dict(node_input_dim=process.state_dim, type_output_dim=process.output_dim)
    return replace(config, network=replace(config.network, **io))

"""Training loop for KLDM (CSP or DNG): resumable, one process or several (DDP), to a model folder.

``train(options)`` does, in order:

1. read the training set (cached parse) and derive what the model must remember:
   element vocabulary, lattice statistics per atom count, atom-count distribution;
2. build the :class:`~kldm_cli.model.KLDM` model from a :class:`~kldm_cli.config.KLDMConfig`
   (or reload the run's own ``config.json`` when resuming);
3. loop: t ~ U(t_min, 1], denoising losses, Adam, gradient clipping, EMA of the weights;
4. every ``checkpoint_every`` steps write ``checkpoint.safetensors`` (model, EMA, optimizer, RNG,
   position in the data order), the current EMA weights as a model folder and
   ``training_curves.png``;
5. every ``val_every`` epochs evaluate the validation loss (and, for CSP, the match rate of one
   sample per structure) on a fixed subset and keep the best EMA weights in ``best/``.

The output folder is itself a model folder (``model.safetensors`` + ``config.json`` +
``README.md``) that ``kldm predict --weights`` accepts, plus ``train_log.jsonl``.

**Multi-process (DDP).** Launched by ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` set),
each process joins a process group (NCCL on CUDA, Gloo on CPU), trains the same network wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` on a disjoint shard of every epoch's
permutation (the same permutation on all ranks, see :func:`shard_order`) with its own noise
generator seeded ``seed + rank``; ``--batch-size`` is per process. Only rank 0 writes files and
validates. See ``docs/training.md``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from kldm_cli import __version__
from kldm_cli.checkpoint import load_checkpoint, save_checkpoint
from kldm_cli.config import (
    KLDMConfig,
    NetworkConfig,
    TrainConfig,
    TypeDiffusionConfig,
)
from kldm_cli.data.batch import CrystalBatch, batch_index_from_num_atoms, fully_connected_edges
from kldm_cli.data.lattice import fit_lattice_stats
from kldm_cli.data.readers import file_sha256, load_dataset
from kldm_cli.data.records import CrystalRecord
from kldm_cli.device import resolve_device
from kldm_cli.model import KLDM

CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "train_log.jsonl"
PLOT_NAME = "training_curves.png"
PRECISIONS = ("fp32", "bf16")
VAL_SAMPLERS = ("em", "pc")
#: Seed of the validation subset and of the validation noise: fixed, so scores are comparable.
VAL_SEED = 12345
#: How long a rank waits for the others (rank 0 validating, writing checkpoints) before failing.
DISTRIBUTED_TIMEOUT = timedelta(minutes=60)


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


# ---------------------------------------------------------------------- training set
#: Without ``--max-atoms``, crystals with more atoms are left out (with a note): the network is
#: fully connected, so memory and time grow as atoms² per crystal, and one outlier would set the
#: model's ``max_atoms``.
DEFAULT_MAX_ATOMS = 100
#: Skipped rows named one by one (``kldm data stats`` lists them all).
SKIPPED_SHOWN = 3


def skipped_notes(skipped: Sequence[Any], data: Path | str) -> list[str]:
    """Notes naming the first :data:`SKIPPED_SHOWN` unusable rows (location and reason)."""
    if not skipped:
        return []
    notes = [f"skipped {row.location}: {row.reason}" for row in skipped[:SKIPPED_SHOWN]]
    if len(skipped) > SKIPPED_SHOWN:
        notes.append(
            f"... and {len(skipped) - SKIPPED_SHOWN} more skipped rows "
            f"(kldm data stats {data} lists them all)"
        )
    return notes


def select_by_atoms(
    records: Sequence[CrystalRecord], options: TrainOptions
) -> tuple[list[CrystalRecord], str | None]:
    """The records with at most ``--max-atoms`` atoms, and a note when the default limit
    (:data:`DEFAULT_MAX_ATOMS`, or the ``max_atoms`` of the run being resumed) left some out.

    Raises ``ValueError`` when none is left, saying how to raise the limit.
    """
    limit = options.max_atoms
    if limit is None:
        saved = Path(options.out) / "config.json"
        if (Path(options.out) / CHECKPOINT_NAME).exists() and saved.exists():
            limit = KLDMConfig.load(saved).max_atoms
        else:
            limit = DEFAULT_MAX_ATOMS
    kept = [r for r in records if r.num_atoms <= limit]
    largest = max((r.num_atoms for r in records), default=0)
    if not kept:
        raise ValueError(
            f"{options.data}: no structure has at most {limit} atoms (largest: {largest}); "
            f"pass --max-atoms {largest} to train on them"
        )
    note = None
    if len(kept) < len(records) and options.max_atoms is None:
        note = (
            f"left out {len(records) - len(kept)} crystal(s) with more than {limit} atoms "
            f"(largest: {largest}); pass --max-atoms {largest} to train on them (memory and "
            "time grow as atoms² per crystal)"
        )
    return kept, note


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


# ---------------------------------------------------------------------- helpers
class EMA:
    """Exponential moving average of a module's floating-point state (decay 0.999)."""

    def __init__(self, module: torch.nn.Module, decay: float, start: int) -> None:
        self.decay, self.start = decay, start
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = 0.0 if step < self.start else self.decay
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.shadow[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                self.shadow[name].copy_(value)


def learning_rate_at(
    step: int, base: float, schedule: str, warmup: int, total: int, decay_start: int = 0
) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or cosine decay to 10% at ``total``.

    The cosine starts at ``max(warmup, decay_start)``; between the warm-up and ``decay_start`` the
    rate stays at ``base`` (a warm-up-stable-decay schedule). A ``decay_start`` at the current step
    of a finished run is a cooldown: the run goes on from ``base`` down to ``base / 10``.
    """
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    if schedule == "cosine":
        start = max(warmup, decay_start)
        progress = min(1.0, max(0.0, (step - start) / max(1, total - start)))
        return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; choose constant or cosine")


def epoch_order(num_records: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so resume replays it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_records, generator=generator)


def shard_order(order: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s share of an epoch's order ``[R]``: every ``world_size``-th index.

    The order is first padded to a multiple of ``world_size`` by repeating its first indices
    (as ``DistributedSampler`` does), so every rank gets ``ceil(R / world_size)`` indices and
    takes the same number of steps. The per-rank batches of step ``p`` together are the
    contiguous chunk ``p`` of the (padded) order, of ``batch_size * world_size`` crystals.
    ``world_size == 1`` returns ``order`` unchanged.
    """
    if world_size == 1:
        return order
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    padding = (-len(order)) % world_size
    if padding:
        repeats = math.ceil(padding / len(order))
        order = torch.cat([order, order.repeat(repeats)[:padding]])
    return order[rank::world_size]


def steps_per_epoch(num_records: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch: batches in one rank's shard."""
    return math.ceil(math.ceil(num_records / world_size) / batch_size)


class PackedCrystals:
    """A dataset as flat tensors on one device, so a batch is gathered by index in a few ops.

    Gathering replaces :meth:`CrystalBatch.from_records` (a Python loop over records and a host
    to device copy per step) and gives the identical batch. Per-atom arrays are concatenated in
    record order: ``frac_coords [N_total, 3]``, ``atomic_numbers [N_total]``; per-crystal ones
    are ``lengths [R, 3]`` (Å), ``angles [R, 3]`` (degrees), ``num_atoms [R]`` and ``starts [R]``
    (each crystal's first atom).
    """

    def __init__(
        self,
        records: Sequence[CrystalRecord],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(records) == 0:
            raise ValueError("Cannot pack an empty list of records")
        device = torch.device(device)
        num_atoms = torch.tensor([int(r.num_atoms) for r in records], dtype=torch.long)
        self.num_atoms = num_atoms.to(device)
        self.starts = (torch.cumsum(num_atoms, 0) - num_atoms).to(device)
        frac_coords = np.concatenate([r.frac_coords for r in records])
        self.frac_coords = torch.from_numpy(frac_coords).to(dtype).to(device)
        atomic_numbers = np.concatenate([r.atomic_numbers for r in records])
        self.atomic_numbers = torch.from_numpy(atomic_numbers).long().to(device)
        self.lengths = torch.from_numpy(np.stack([r.lengths for r in records])).to(dtype).to(device)
        self.angles = torch.from_numpy(np.stack([r.angles for r in records])).to(dtype).to(device)

    def __len__(self) -> int:
        return len(self.num_atoms)

    def batch(self, indices: Tensor) -> CrystalBatch:
        """The crystals ``indices [B]`` (record positions) as a batch on this dataset's device."""
        indices = indices.to(self.num_atoms.device)
        num_atoms = self.num_atoms[indices]
        batch_index, offsets = batch_index_from_num_atoms(num_atoms)
        local = torch.arange(len(batch_index), device=batch_index.device) - offsets[batch_index]
        atoms = self.starts[indices][batch_index] + local
        return CrystalBatch(
            frac_coords=self.frac_coords[atoms],
            lengths=self.lengths[indices],
            angles=self.angles[indices],
            atomic_numbers=self.atomic_numbers[atoms],
            num_atoms=num_atoms,
            offsets=offsets,
            batch_index=batch_index,
            edge_index=fully_connected_edges(num_atoms),
        )


def iterate_batches(
    dataset: PackedCrystals, order: Tensor, batch_size: int, start: int
) -> Iterator[tuple[int, CrystalBatch]]:
    """Yield (batch position, batch) from position ``start`` of ``order`` (one rank's shard)."""
    num_batches = math.ceil(len(order) / batch_size)
    for position in range(start, num_batches):
        yield position, dataset.batch(order[position * batch_size : (position + 1) * batch_size])


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


def model_card(config: KLDMConfig, summary: dict[str, Any]) -> str:
    """A model card (README.md) with the Hub's YAML front matter (see ``weights/README.md``).

    ``kldm_metrics`` is deliberately absent: it is added at release time together with the
    ``kldm evaluate`` command that measured it.
    """
    task_tag = "crystal-structure-prediction" if config.task == "csp" else "crystal-generation"
    task_words = (
        "crystal structure prediction (composition given; coordinates and lattice generated)"
        if config.task == "csp"
        else "de novo generation (atom types, coordinates and lattice generated)"
    )
    data = config.provenance.get("train_data")
    sha = str(config.provenance.get("train_data_sha256", "?"))
    lines = [
        "---",
        "library_name: kldm",
        "license: mit",
        f"tags: [kldm, materials, diffusion, {task_tag}]",
        f"task: {config.task}",
        "---",
        f"# kldm {config.task.upper()} model",
        "",
        "Kinetic Langevin Diffusion for Materials (Cornet, Bergamin et al., ICML 2025), trained",
        "with `kldm train`.",
        "",
        "## Task",
        "",
        f"{task_words[0].upper()}{task_words[1:]}.",
        "",
        "## Data",
        "",
        f"- training data: `{data}` (sha256 `{sha[:16]}…`, full hash in `config.json`)",
        f"- elements: {len(config.elements)}; atoms per cell: "
        f"{config.min_atoms}–{config.max_atoms}",
        "",
        "## Training",
        "",
        f"- preset: {config.provenance.get('preset')}; network: {asdict(config.network)}",
    ]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    lines += [
        "",
        "## Metrics",
        "",
        "Not measured yet. Measure with `kldm evaluate` and add the numbers to the front matter",
        "as `kldm_metrics`, with the exact command as `kldm_metrics_command`.",
        "",
        "## Limitations",
        "",
        "Generates only elements and atom counts seen in training; metrics, where reported, "
        "were measured with `kldm evaluate` and are listed with their command.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- training log and plot
def read_training_log(log_path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``train_log.jsonl``; unreadable lines (a torn last line) are skipped."""
    records = []
    for line in Path(log_path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def plot_training_log(log_path: str | Path, out_png: str | Path) -> Path:
    """Plot a ``train_log.jsonl`` into a PNG: losses (log scale) and validation match rate.

    Left: the training losses ``loss``, ``loss_v``, ``loss_l`` (and ``loss_a`` for DNG) per
    logged step, faint, with a running average on top, plus ``val_loss``; right: the
    validation match rate, the validation kept in ``best/`` starred. Uses matplotlib's Agg
    canvas directly, so no global backend is changed. Raises ``ImportError`` without
    matplotlib. Returns ``out_png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_training_log(log_path)
    train_rows = {r["step"]: r for r in records if "loss" in r}  # last record wins per step
    val_rows = {r["step"]: r for r in records if "val_loss" in r}
    for row in val_rows.values():
        row.setdefault("val_match_rate", None)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, rate_axes = figure.subplots(1, 2)
    steps = sorted(train_rows)
    labels = {
        "loss": "loss (total)", "loss_v": "loss_v (velocity)", "loss_l": "loss_l (lattice)",
        "loss_a": "loss_a (atom types)",
    }  # fmt: skip
    for index, (key, label) in enumerate(labels.items()):
        points = [(s, train_rows[s][key]) for s in steps if key in train_rows[s]]
        points = [(s, v) for s, v in points if v is not None and v > 0 and math.isfinite(v)]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        color = f"C{index}"
        loss_axes.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
        loss_axes.plot(xs, _running_mean(ys), color=color, linewidth=1.8, label=label)
    val_steps = sorted(val_rows)
    val_losses = [(s, val_rows[s]["val_loss"]) for s in val_steps]
    val_losses = [(s, v) for s, v in val_losses if v is not None and v > 0 and math.isfinite(v)]
    if val_losses:
        xs, ys = zip(*val_losses, strict=True)
        loss_axes.plot(xs, ys, "o-", color="black", markersize=4, label="val_loss")
    run_name = Path(log_path).resolve().parent.name
    loss_axes.set(xlabel="step", ylabel="loss", title=f"Losses — {run_name}")
    if steps or val_losses:
        loss_axes.set_yscale("log")
        loss_axes.legend(fontsize=8)
    loss_axes.grid(alpha=0.3, which="both")

    rates = [(s, val_rows[s]["val_match_rate"]) for s in val_steps]
    rates = [(s, v) for s, v in rates if v is not None]
    if rates:
        xs, ys = zip(*rates, strict=True)
        rate_axes.plot(xs, ys, "o-", color="C4", markersize=4, label="val match rate")
        flagged = [i for i, s in enumerate(xs) if val_rows[s].get("best")]  # what best/ holds
        best = flagged[-1] if flagged else max(range(len(ys)), key=lambda i: ys[i])
        rate_axes.plot([xs[best]], [ys[best]], "*", color="C3", markersize=14, label="best/")
        rate_axes.set_ylim(0.0, max(0.05, min(1.0, max(ys) * 1.2)))
        rate_axes.legend(fontsize=8)
    else:
        rate_axes.text(
            0.5, 0.5, "no match rate logged\n(CSP with --val and --val-every)",
            ha="center", va="center", transform=rate_axes.transAxes, color="gray",
        )  # fmt: skip
    rate_axes.set(xlabel="step", ylabel="match rate", title="Validation match rate (CSP)")
    rate_axes.grid(alpha=0.3)
    if steps:
        rate_axes.set_xlim(loss_axes.get_xlim())

    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, out_png)
    finally:
        tmp.unlink(missing_ok=True)
    return out_png


def _running_mean(values: Sequence[float], window: int = 10) -> list[float]:
    cumulative = np.cumsum(np.asarray(values, dtype=float))
    out = []
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out.append((cumulative[i] - (cumulative[lo - 1] if lo else 0.0)) / (i + 1 - lo))
    return out


# ---------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in a ``torchrun`` launch (rank 0 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env(environ: dict[str, str] | None = None) -> DistributedInfo | None:
    """The launch described by ``torchrun``'s variables, or None when not launched by it.

    ``WORLD_SIZE`` marks a launch; ``RANK`` is then required, ``LOCAL_RANK`` defaults to it.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "missing"))
        local_rank = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK/WORLD_SIZE are not all integers "
            f"(WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}, "
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r}); launch with torchrun"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent launch: RANK={rank}, WORLD_SIZE={world_size}")
    return DistributedInfo(rank=rank, local_rank=local_rank, world_size=world_size)


#: CPU feature flags (``/proc/cpuinfo``) of native bf16 arithmetic: AMX tiles, AVX-512 BF16.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU listed in ``cpuinfo`` (empty where it is unreadable,
    e.g. off Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX or AVX-512 BF16)."""
    return not cpu_flags(cpuinfo).isdisjoint(NATIVE_BF16_FLAGS)


def check_bf16_support(device: torch.device) -> None:
    """Refuse ``--precision bf16`` where it would be emulated: a GPU without bf16, or a CPU
    without native bf16 instructions (there bf16 autocast is several times slower than fp32)."""
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("--precision bf16: this GPU has no bf16 support; use fp32")
        return
    if not cpu_has_native_bf16():
        raise ValueError(
            "--precision bf16 needs --device cuda or a CPU with native bf16 instructions "
            f"(one of the flags {', '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo); this CPU "
            "has none, so bf16 would be emulated and several times slower than fp32"
        )


class _TrainingForward(torch.nn.Module):
    """The network as the training step calls it: optionally DDP-wrapped, optionally under
    autocast, always returning float32 outputs so that the losses are computed in float32.

    Stands in for ``KLDM.network`` during training; the plain network stays the owner of the
    parameters (optimizer, EMA, checkpoints).
    """

    def __init__(self, network: torch.nn.Module, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.network = network
        self.autocast_dtype = autocast_dtype

    def forward(self, **inputs: Any) -> Any:
        if self.autocast_dtype is None:
            return self.network(**inputs)
        device_type = inputs["frac_coords"].device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype):
            output = self.network(**inputs)
        return replace(
            output,
            **{
                f.name: getattr(output, f.name).float()
                for f in fields(output)
                if isinstance(getattr(output, f.name), Tensor)
            },
        )


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary.

    The first signal sets the flag (the trainer then writes a checkpoint and returns); the
    handlers are then restored, so a second Ctrl-C interrupts at once. Only installed from the
    main thread (signal handlers cannot be set elsewhere).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.restore()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """Holds the model, optimizer, EMA and RNG of one run; :meth:`run` trains it."""

    def __init__(
        self, options: TrainOptions, on_log: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        check_options(options)
        self.options = options
        self.on_log = on_log or (lambda record: None)
        self.out = Path(options.out)
        #: One-line messages for the user about this run (resume details, skipped data, ...).
        self.notes: list[str] = []
        self._owns_process_group = False
        self.dist = self._setup_distributed()
        self.device = resolve_device(
            options.device, self.dist.local_rank if self._distributed else None
        )
        if options.precision == "bf16":
            check_bf16_support(self.device)
        if self.dist.is_main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"cannot create output folder {self.out}: {err}") from err

        # Rank 0 reads (and, the first time, parses and caches) the data before the others.
        with self._main_first():
            dataset = load_dataset(options.data, cache_dir=options.cache_dir)
        if not dataset.records:
            raise ValueError(
                f"{options.data}: no usable structures ({len(dataset.skipped)} skipped)"
            )
        self.skipped = len(dataset.skipped)
        self.notes += skipped_notes(dataset.skipped, options.data)
        self.records, note = select_by_atoms(dataset.records, options)
        self.notes += [note] if note else []

        checkpoint_path = self.out / CHECKPOINT_NAME
        config_path = self.out / "config.json"
        self.resumed = checkpoint_path.exists() and config_path.exists()
        init_state: dict[str, Tensor] | None = None
        self._barrier()  # every rank has looked before rank 0 writes config.json
        if self.resumed:
            self.config = KLDMConfig.load(config_path)
            previous = self.config.provenance.get("train_data_sha256")
            if previous and previous != dataset.content_hash:
                raise ValueError(
                    f"{self.out} holds a run trained on other data (sha256 {previous[:12]}…); "
                    "use a new --out folder"
                )
            known = set(self.config.elements)  # a fine-tuning run left some structures out
            self.records = [r for r in self.records if {int(z) for z in r.atomic_numbers} <= known]
        else:
            init_config, init_state = self._read_init()
            self.config = build_config(
                options,
                self.records,
                dataset.content_hash,
                init=init_config,
                init_sha256=self._init_sha256(),
            )
            if self.dist.is_main:
                self.config.save(config_path)
        self.val_records = self._load_val_records()

        with torch.random.fork_rng(devices=[]):  # weight init fixed by the seed
            torch.manual_seed(options.seed)
            self.model = KLDM(self.config)
        if not self.resumed and init_state is not None:
            from kldm_cli.hub import load_state_dict_strict

            load_state_dict_strict(
                self.model.network, init_state, str(Path(options.init_from) / "model.safetensors")
            )
        self.model = self.model.to(self.device)
        #: The network that owns the parameters (optimizer, EMA, checkpoints).
        self.network = self.model.network
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=options.learning_rate)
        self.ema = EMA(self.network, self.config.train.ema_decay, self.config.train.ema_start)
        self.generator = torch.Generator(device=self.device).manual_seed(
            options.seed + self.dist.rank
        )
        self.data = PackedCrystals(self.records, self.device)
        self.step, self.epoch, self.position = 0, 0, 0
        self.best_val: float | None = None
        self.best_val_loss: float | None = None
        self.elapsed = 0.0
        self.epoch_start_elapsed: float | None = None
        if self.resumed:
            self._restore(load_checkpoint(checkpoint_path))
            if self.dist.is_main:
                self._truncate_log()
        self._wrap_network()
        self._stop = _StopFlag()
        self._clock = time.perf_counter()

    # -------------------------------------------------------------- distributed plumbing
    @property
    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def _setup_distributed(self) -> DistributedInfo:
        """Join (or create) the process group of a torchrun launch; rank 0 of 1 otherwise."""
        if dist.is_available() and dist.is_initialized():  # set up by the caller
            env = distributed_from_env()
            local_rank = env.local_rank if env else dist.get_rank()
            return DistributedInfo(dist.get_rank(), local_rank, dist.get_world_size())
        info = distributed_from_env()
        if info is None:
            return DistributedInfo()
        if not dist.is_available():
            raise ValueError("launched by torchrun, but this torch build has no torch.distributed")
        device = resolve_device(self.options.device, info.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=DISTRIBUTED_TIMEOUT,
            **({"device_id": device} if device.type == "cuda" else {}),
        )
        self._owns_process_group = True
        return info

    def close(self) -> None:
        """Leave the process group if this trainer created it.

        The DDP wrapper goes first: it holds the group, and a group that outlives
        ``destroy_process_group`` is torn down whenever the trainer is freed, which for a
        trainer caught in a reference cycle can be at interpreter exit, where Gloo's threads
        abort the process (SIGABRT, "terminate called without an active exception").
        """
        if self._owns_process_group and dist.is_initialized():
            self.model.network = self.network
            dist.destroy_process_group()
        self._owns_process_group = False

    def _barrier(self) -> None:
        if self._distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    @contextmanager
    def _main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first, then the other ranks (a no-op in a single process)."""
        if not self.dist.is_main:
            self._barrier()
        yield
        if self.dist.is_main:
            self._barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _wrap_network(self) -> None:
        """Route the training forward through DDP and/or autocast (nothing to do otherwise)."""
        network: torch.nn.Module = self.network
        if self._distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            network = DistributedDataParallel(network, device_ids=device_ids)
        autocast = torch.bfloat16 if self.options.precision == "bf16" else None
        if network is not self.network or autocast is not None:
            self.model.network = _TrainingForward(network, autocast)

    def _gather_rng_states(self) -> list[Tensor]:
        """Every rank's noise generator state, on every rank (empty list in a single process)."""
        if not self._distributed:
            return []
        state = self.generator.get_state().to(self._comm_device())
        states = [torch.empty_like(state) for _ in range(self.dist.world_size)]
        dist.all_gather(states, state)
        return [s.cpu() for s in states]

    def _stop_everywhere(self) -> bool:
        """True on every rank once any rank got a stop signal, so all ranks stop at one step."""
        if not self._distributed:
            return self._stop.requested
        flag = torch.tensor([float(self._stop.requested)], device=self._comm_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def request_stop(self) -> None:
        """Ask :meth:`run` to write a checkpoint and return after the current step."""
        self._stop.requested = True

    # -------------------------------------------------------------- fine-tuning
    def _read_init(self) -> tuple[KLDMConfig | None, dict[str, Tensor] | None]:
        """The config and weights of ``--init-from``, with the training structures restricted to
        its elements (``(None, None)`` without ``--init-from``)."""
        if self.options.init_from is None:
            return None, None
        from kldm_cli.hub import read_model_folder

        init_config, init_state = read_model_folder(self.options.init_from)
        if init_config.task != self.options.task:
            raise ValueError(
                f"--init-from {self.options.init_from} holds a {init_config.task.upper()} model; "
                f"this run trains {self.options.task.upper()}"
            )
        known = set(init_config.elements)
        kept = [r for r in self.records if {int(z) for z in r.atomic_numbers} <= known]
        if not kept:
            raise ValueError(
                f"{self.options.data}: no structure uses only the elements of the model in "
                f"{self.options.init_from}"
            )
        if len(kept) < len(self.records):
            self.notes.append(
                f"--init-from: {len(self.records) - len(kept)} training structures left out "
                f"(elements unknown to {self.options.init_from})"
            )
        self.records = kept
        return init_config, init_state

    def _init_sha256(self) -> str | None:
        if self.options.init_from is None:
            return None
        return file_sha256(Path(self.options.init_from) / "model.safetensors")

    # -------------------------------------------------------------- data
    def _load_val_records(self) -> list[CrystalRecord]:
        """A fixed subset (``val_subset`` structures, seed :data:`VAL_SEED`) of the validation set,
        restricted to the elements and atom counts the model knows (others are counted)."""
        options = self.options
        if options.val is None:
            return []
        with self._main_first():
            records = load_dataset(options.val, cache_dir=options.cache_dir).records
        known = set(self.config.elements)
        usable = [
            r
            for r in records
            if r.num_atoms <= self.config.max_atoms and {int(z) for z in r.atomic_numbers} <= known
        ]
        if len(usable) < len(records):
            self.notes.append(
                f"validation: {len(records) - len(usable)} of {len(records)} structures left out "
                f"(elements unknown to the model or more than {self.config.max_atoms} atoms)"
            )
        if options.val_subset < len(usable):
            generator = torch.Generator().manual_seed(VAL_SEED)
            chosen = torch.randperm(len(usable), generator=generator)[: options.val_subset]
            usable = [usable[i] for i in sorted(chosen.tolist())]
        return usable

    # -------------------------------------------------------------- state
    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.network.load_state_dict(checkpoint["model"])
        self.ema.shadow = {k: v.to(self.device) for k, v in checkpoint["ema"].items()}
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["trainer_state"]
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best_val, self.elapsed = state.get("best_val"), state.get("elapsed", 0.0)
        self.best_val_loss = state.get("best_val_loss")
        self.epoch_start_elapsed = state.get("epoch_start_elapsed")
        saved_world = int(state.get("world_size", 1))
        world = self.dist.world_size
        if saved_world == world:
            ranks = checkpoint["rng_ranks"]
            rng = ranks[self.dist.rank] if len(ranks) == world else checkpoint["rng"]
            if len(ranks) != world and self.dist.rank > 0:
                rng = None
        else:
            rng = checkpoint["rng"] if self.dist.rank == 0 else None
            samples = self.position * self.options.batch_size * saved_world
            self.position = samples // (self.options.batch_size * world)
            self.notes.append(
                f"resumed with {world} process(es) a run saved with {saved_world}: the epoch "
                f"continues after about the same number of samples (position {self.position}); "
                "data order and noise do not reproduce an uninterrupted run exactly"
            )
        if rng is None or not self._set_generator_state(rng):
            self.generator.manual_seed(self.options.seed + self.dist.rank + 1_000_003 * self.step)
            if rng is not None:
                self.notes.append(
                    "the noise generator state was saved on another device type; it was reseeded "
                    "from (seed, rank, step)"
                )

    def _set_generator_state(self, state: Tensor) -> bool:
        try:
            self.generator.set_state(state)
        except RuntimeError:  # e.g. a CPU generator state given to a CUDA generator
            return False
        return True

    def _truncate_log(self) -> None:
        """Drop log records written after the checkpoint we resume from (they will be redone)."""
        path = self.out / LOG_NAME
        if not path.exists():
            return
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                later = record["step"] > self.step or record.get("epoch", 0) > self.epoch
            except (json.JSONDecodeError, KeyError, TypeError):
                later = True  # a torn line from a crash
            if later:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def save(self) -> None:
        """Write the checkpoint, the EMA model folder and the plot (rank 0; a collective under
        DDP: every rank must call it)."""
        self._tick()
        rank_states = self._gather_rng_states()
        if not self.dist.is_main:
            return
        trainer_state = {
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "best_val": self.best_val, "best_val_loss": self.best_val_loss,
            "elapsed": self.elapsed, "epoch_start_elapsed": self.epoch_start_elapsed,
            "world_size": self.dist.world_size,
        }  # fmt: skip
        save_checkpoint(
            self.out / CHECKPOINT_NAME,
            self.network.state_dict(),
            self.ema.shadow,
            self.optimizer,
            self.generator.get_state(),
            trainer_state,
            rank_rng_states=rank_states,
        )
        self._write_model_folder(self.out, {"steps": self.step, "epochs": self.epoch})
        self.plot()

    def plot(self) -> Path | None:
        """Regenerate ``training_curves.png`` from the log (rank 0; skipped without matplotlib)."""
        log = self.out / LOG_NAME
        if not (self.options.plot and self.dist.is_main and log.exists()):
            return None
        try:
            return plot_training_log(log, self.out / PLOT_NAME)
        except ImportError:
            note = "training_curves.png not written: matplotlib is not installed"
        except Exception as err:  # a figure must never stop a training run
            note = f"training_curves.png not written: {type(err).__name__}: {err}"
        if note not in self.notes:
            self.notes.append(note)
        return None

    def _write_model_folder(self, folder: Path, summary: dict[str, Any]) -> None:
        from kldm_cli.hub import write_model_folder

        hardware = f"{self.dist.world_size} × {self.device.type}"
        if self.device.type == "cuda":
            hardware += f" ({torch.cuda.get_device_name(self.device)})"
        summary = {
            "command": f"`{command_line(self.options, self.dist.world_size)}`",
            **summary,
            "batch size": f"{self.options.batch_size} per process × {self.dist.world_size}",
            "hardware": hardware,
            "precision": self.options.precision,
            "training wall time (s)": round(self.elapsed, 1),
        }
        write_model_folder(folder, self.ema.shadow, self.config, model_card(self.config, summary))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / LOG_NAME, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.on_log(record)

    def _tick(self) -> float:
        """Add the wall time since the last tick to ``elapsed``; returns ``elapsed``."""
        now = time.perf_counter()
        self.elapsed += now - self._clock
        self._clock = now
        return self.elapsed

    # -------------------------------------------------------------- loop
    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.records), self.options.batch_size, self.dist.world_size)

    @property
    def total_steps(self) -> int:
        by_epochs = self.steps_per_epoch * self.options.epochs
        return min(by_epochs, self.options.max_steps) if self.options.max_steps else by_epochs

    def _train_step(self, batch: CrystalBatch) -> tuple[Tensor, Tensor, float]:
        """One optimizer step; returns the detached losses [3 or 4], the gradient norm and lr."""
        lr = learning_rate_at(
            self.step, self.options.learning_rate, self.options.lr_schedule,
            self.options.warmup_steps, self.total_steps, self.options.decay_start,
        )  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        losses = self.model.loss(batch, generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.network.parameters(), self.config.train.grad_clip
        )
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.network, self.step)
        parts = [losses.total, losses.velocity, losses.lattice]
        if losses.types is not None:
            parts.append(losses.types)
        return torch.stack([p.detach().float() for p in parts]), grad_norm.detach(), lr

    def _loss_record(self, losses: Tensor) -> dict[str, float]:
        """Losses as floats, averaged over ranks under DDP (a collective at log steps)."""
        if self._distributed:
            losses = losses.to(self._comm_device(), copy=True)  # all_reduce works in place
            dist.all_reduce(losses)
            losses = losses / self.dist.world_size
        names = ["loss", "loss_v", "loss_l", "loss_a"]
        return dict(zip(names, losses.tolist(), strict=False))

    def run(self) -> TrainResult:
        """Train until ``epochs`` or ``max_steps``; checkpoint on the way and at the end.

        On SIGINT/SIGTERM (first Ctrl-C), the current step finishes, a checkpoint is written
        and the result comes back with ``interrupted=True``; rerunning resumes exactly.
        """
        options = self.options
        last_losses: Tensor | None = None
        interrupted = False
        self._stop.install()
        self._clock = time.perf_counter()
        window_start, window_steps = self._clock, 0
        try:
            while self.epoch < options.epochs and self.step < self.total_steps:
                if self.position == 0:  # (a run resumed mid-epoch keeps its saved start)
                    self.epoch_start_elapsed = self._tick()
                order = shard_order(
                    epoch_order(len(self.records), options.seed, self.epoch),
                    self.dist.rank, self.dist.world_size,
                )  # fmt: skip
                num_batches = math.ceil(len(order) / options.batch_size)
                for position, batch in iterate_batches(
                    self.data, order, options.batch_size, self.position
                ):
                    last_losses, grad_norm, lr = self._train_step(batch)
                    self.position = position + 1
                    window_steps += 1
                    if self.step % options.log_every == 0:
                        record = self._loss_record(last_losses)
                        now = time.perf_counter()
                        rate = window_steps / max(now - window_start, 1e-9)
                        window_start, window_steps = now, 0
                        self._log({
                            "step": self.step, "epoch": self.epoch, **record, "lr": lr,
                            "grad_norm": float(grad_norm), "steps_per_s": rate,
                        })  # fmt: skip
                    if self._stop_everywhere():
                        interrupted = True
                        break
                    if self.step % options.checkpoint_every == 0:
                        self.save()
                    if self.step >= self.total_steps and self.position < num_batches:
                        break  # (after an epoch's last batch, fall through to its end first)
                else:
                    self._end_epoch()
                    continue
                break
            self.save()
        finally:
            self._stop.restore()
            self.close()
        last_loss = float(last_losses[0]) if last_losses is not None else float("nan")
        return TrainResult(
            self.out, self.step, self.epoch, self.elapsed, last_loss, self.best_val, interrupted
        )

    def _end_epoch(self) -> None:
        elapsed = self._tick()
        start = self.epoch_start_elapsed  # None: resumed from a checkpoint that lacks it
        seconds = None if start is None else elapsed - start
        self.epoch, self.position = self.epoch + 1, 0
        self.epoch_start_elapsed = None
        self._log({"step": self.step, "epoch": self.epoch, "epoch_seconds": seconds})
        if self.options.val_every and self.epoch % self.options.val_every == 0:
            if self.dist.is_main:
                self._validate()
            self._barrier()

    # -------------------------------------------------------------- validation
    def ema_model(self) -> KLDM:
        """A fresh model holding the EMA weights, in eval mode, on the training device."""
        model = KLDM(self.config).to(self.device)
        model.network.load_state_dict(self.ema.shadow)
        return model.eval()

    @torch.no_grad()
    def validation_loss(self) -> float:
        """EMA model's loss on the validation subset, with a fixed noise seed."""
        model = self.ema_model()
        generator = torch.Generator(device=self.device).manual_seed(VAL_SEED)
        total, count = 0.0, 0
        for start in range(0, len(self.val_records), self.options.batch_size):
            chunk = self.val_records[start : start + self.options.batch_size]
            batch = CrystalBatch.from_records(chunk).to(self.device)
            total += float(model.loss(batch, generator=generator).total) * len(chunk)
            count += len(chunk)
        return total / max(count, 1)

    def validation_match_rate(self) -> float:
        """Match rate of one EMA sample per validation structure (CSP only): ``val_sampler``
        with ``val_steps`` steps, seed 0, matched with the CSP StructureMatcher settings in
        ``val_workers`` processes (30 s limit per pair; 0: in this process, no limit)."""
        from kldm_cli.metrics.csp import match_structures
        from kldm_cli.predict import sample_model

        model = self.ema_model()
        compositions = [r.atomic_numbers.tolist() for r in self.val_records]
        candidates = sample_model(
            model, compositions, 1, method=self.options.val_sampler,
            steps=self.options.val_steps, seed=0, device=str(self.device),
        )  # fmt: skip
        targets = [r.to_structure() for r in self.val_records]
        return match_structures(candidates, targets, workers=self.options.val_workers).match_rate

    def _validate(self) -> None:
        if not self.val_records:
            return
        started = time.perf_counter()
        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        try:
            record["val_loss"] = self.validation_loss()
            if self.config.task == "csp" and self.options.val_steps > 0:
                record["val_match_rate"] = self.validation_match_rate()
        except Exception:
            if not self._stop.requested:
                raise
        if self._stop.requested:  # Ctrl-C also reaches the matching processes: unreliable
            self.notes.append(f"validation at epoch {self.epoch} interrupted; not recorded")
            return
        record["val_seconds"] = time.perf_counter() - started
        if self._is_better(record.get("val_match_rate"), record["val_loss"]):
            self.best_val = record.get("val_match_rate", -record["val_loss"])
            self.best_val_loss = record["val_loss"]
            record["best"] = True
            summary = {"steps": self.step, "epochs": self.epoch}
            summary.update({k: v for k, v in record.items() if k.startswith("val_")})
            self._write_model_folder(self.out / "best", summary)
        self._log(record)

    def _is_better(self, match_rate: float | None, val_loss: float) -> bool:
        """Higher match rate wins (CSP), ties broken by lower validation loss; DNG: lower loss."""
        score = match_rate if match_rate is not None else -val_loss
        if self.best_val is None or score > self.best_val:
            return True
        if match_rate is not None and score == self.best_val:
            return self.best_val_loss is not None and val_loss < self.best_val_loss
        return False


def train(
    options: TrainOptions, on_log: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Train (or resume) a KLDM model; see :class:`TrainOptions`."""
    trainer = Trainer(options, on_log)
    try:
        return trainer.run()
    finally:
        trainer.close()

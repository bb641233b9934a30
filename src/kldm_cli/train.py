"""Training loop for KLDM (CSP or DNG), resumable, writing a model folder.

``train(options)`` does, in order:

1. read the training set (cached parse) and derive what the model must remember:
   element vocabulary, lattice statistics per atom count, atom-count distribution;
2. build the :class:`~kldm_cli.model.KLDM` model from a :class:`~kldm_cli.config.KLDMConfig`
   (or reload the run's own ``config.json`` when resuming);
3. loop: t ~ U(t_min, 1], denoising losses, Adam, gradient clipping, EMA of the weights;
4. every ``checkpoint_every`` steps write ``checkpoint.safetensors`` (model, EMA, optimizer, RNG,
   position in the data order) and the current EMA weights as a model folder;
5. optionally evaluate the validation loss / match rate and keep the best weights in ``best/``.

The output folder is itself a model folder (``model.safetensors`` + ``config.json`` +
``README.md``) that ``kldm predict --weights`` accepts, plus ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kldm_cli import __version__
from kldm_cli.checkpoint import load_checkpoint, save_checkpoint
from kldm_cli.config import (
    KLDMConfig,
    NetworkConfig,
    TrainConfig,
    TypeDiffusionConfig,
)
from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.lattice import fit_lattice_stats
from kldm_cli.data.readers import load_dataset
from kldm_cli.data.records import CrystalRecord
from kldm_cli.model import KLDM

CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "train_log.jsonl"


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
    batch_size: int = 256
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 42
    device: str = "cpu"
    checkpoint_every: int = 500
    log_every: int = 25
    val_every: int = 0
    val_subset: int = 256
    val_steps: int = 200
    val_sampler: str = "em"
    max_atoms: int | None = None
    cache_dir: Path | None = None
    network_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    out: Path
    steps: int
    epochs: int
    seconds: float
    last_loss: float
    best_val: float | None


# ---------------------------------------------------------------------- configuration
def build_config(
    options: TrainOptions, records: Sequence[CrystalRecord], data_hash: str
) -> KLDMConfig:
    """Derive the model config from the options and the training set."""
    if options.task not in ("csp", "dng"):
        raise ValueError(f"Unknown task {options.task!r}; choose 'csp' or 'dng'")
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


def learning_rate_at(step: int, base: float, schedule: str, warmup: int, total: int) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or cosine decay to 10%."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; choose constant or cosine")


def epoch_order(num_records: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so resume replays it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_records, generator=generator)


def iterate_batches(
    records: Sequence[CrystalRecord], order: torch.Tensor, batch_size: int, start: int
) -> Iterator[tuple[int, CrystalBatch]]:
    """Yield (batch position, batch) from position ``start`` of ``order``."""
    num_batches = math.ceil(len(order) / batch_size)
    for position in range(start, num_batches):
        indices = order[position * batch_size : (position + 1) * batch_size].tolist()
        yield position, CrystalBatch.from_records([records[i] for i in indices])


def model_card(config: KLDMConfig, summary: dict[str, Any]) -> str:
    """A model card (README.md) describing how the weights were made."""
    lines = [
        "---",
        "library_name: kldm",
        f"task: {config.task}",
        "---",
        f"# kldm {config.task.upper()} model",
        "",
        "Kinetic Langevin Diffusion for Materials (Cornet, Bergamin et al., ICML 2025), trained",
        "with `kldm train`.",
        "",
        "## Training",
        "",
        f"- data: `{config.provenance.get('train_data')}` "
        f"(sha256 `{config.provenance.get('train_data_sha256', '?')[:16]}…`)",
        f"- preset: {config.provenance.get('preset')}; network: {asdict(config.network)}",
        f"- elements: {len(config.elements)}; atoms per cell: "
        f"{config.min_atoms}–{config.max_atoms}",
    ]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    lines += [
        "",
        "## Limitations",
        "",
        "Generates only elements and atom counts seen in training; metrics, where reported, "
        "were measured with `kldm evaluate` and are listed with their command.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """Holds the model, optimizer, EMA and RNG of one run; :meth:`run` trains it."""

    def __init__(
        self, options: TrainOptions, on_log: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.options = options
        self.on_log = on_log or (lambda record: None)
        self.out = Path(options.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot create output folder {self.out}: {err}") from err
        dataset = load_dataset(options.data, cache_dir=options.cache_dir)
        if not dataset.records:
            raise ValueError(
                f"{options.data}: no usable structures ({len(dataset.skipped)} skipped)"
            )
        self.skipped = len(dataset.skipped)
        self.records = [
            r
            for r in dataset.records
            if options.max_atoms is None or r.num_atoms <= options.max_atoms
        ]
        self.val_records: list[CrystalRecord] = []
        if options.val is not None:
            self.val_records = load_dataset(options.val, cache_dir=options.cache_dir).records[
                : options.val_subset
            ]

        checkpoint_path = self.out / CHECKPOINT_NAME
        config_path = self.out / "config.json"
        self.resumed = checkpoint_path.exists() and config_path.exists()
        if self.resumed:
            self.config = KLDMConfig.load(config_path)
            previous = self.config.provenance.get("train_data_sha256")
            if previous and previous != dataset.content_hash:
                raise ValueError(
                    f"{self.out} holds a run trained on other data (sha256 {previous[:12]}…); "
                    "use a new --out folder"
                )
        else:
            self.config = build_config(options, self.records, dataset.content_hash)
            self.config.save(config_path)

        self.device = torch.device(options.device)
        with torch.random.fork_rng(devices=[]):  # weight init fixed by the seed
            torch.manual_seed(options.seed)
            self.model = KLDM(self.config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.network.parameters(), lr=options.learning_rate)
        self.ema = EMA(self.model.network, self.config.train.ema_decay, self.config.train.ema_start)
        self.generator = torch.Generator(device=self.device).manual_seed(options.seed)
        self.step, self.epoch, self.position = 0, 0, 0
        self.best_val: float | None = None
        self.elapsed = 0.0
        if self.resumed:
            self._restore(load_checkpoint(checkpoint_path))

    # -------------------------------------------------------------- state
    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.network.load_state_dict(checkpoint["model"])
        self.ema.shadow = {k: v.to(self.device) for k, v in checkpoint["ema"].items()}
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.generator.set_state(checkpoint["rng"])
        state = checkpoint["trainer_state"]
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best_val, self.elapsed = state.get("best_val"), state.get("elapsed", 0.0)

    def save(self) -> None:
        trainer_state = {
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "best_val": self.best_val, "elapsed": self.elapsed,
        }  # fmt: skip
        save_checkpoint(
            self.out / CHECKPOINT_NAME,
            self.model.network.state_dict(),
            self.ema.shadow,
            self.optimizer,
            self.generator.get_state(),
            trainer_state,
        )
        self._write_model_folder(self.out, {"steps": self.step, "epochs": self.epoch})

    def _write_model_folder(self, folder: Path, summary: dict[str, Any]) -> None:
        from kldm_cli.hub import write_model_folder

        summary = {**summary, "training wall time (s)": round(self.elapsed, 1)}
        write_model_folder(folder, self.ema.shadow, self.config, model_card(self.config, summary))

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / LOG_NAME, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.on_log(record)

    # -------------------------------------------------------------- loop
    @property
    def total_steps(self) -> int:
        per_epoch = math.ceil(len(self.records) / self.options.batch_size)
        by_epochs = per_epoch * self.options.epochs
        return min(by_epochs, self.options.max_steps) if self.options.max_steps else by_epochs

    def _train_step(self, batch: CrystalBatch) -> dict[str, float]:
        lr = learning_rate_at(
            self.step, self.options.learning_rate, self.options.lr_schedule,
            self.options.warmup_steps, self.total_steps,
        )  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        losses = self.model.loss(batch.to(self.device), generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.network.parameters(), self.config.train.grad_clip
        )
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model.network, self.step)
        return {**losses.as_floats(), "lr": lr, "grad_norm": float(grad_norm)}

    def run(self) -> TrainResult:
        """Train until ``epochs`` or ``max_steps``; checkpoint on the way and at the end."""
        options = self.options
        last: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        while self.epoch < options.epochs and self.step < self.total_steps:
            order = epoch_order(len(self.records), options.seed, self.epoch)
            for position, batch in iterate_batches(
                self.records, order, options.batch_size, self.position
            ):
                last = self._train_step(batch)
                self.position = position + 1
                window_steps += 1
                if self.step % options.log_every == 0:
                    now = time.perf_counter()
                    self.elapsed += now - window_start
                    rate = window_steps / max(now - window_start, 1e-9)
                    window_start, window_steps = now, 0
                    self._log({"step": self.step, "epoch": self.epoch, **last, "steps_per_s": rate})
                if self.step % options.checkpoint_every == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
            else:
                self.epoch, self.position = self.epoch + 1, 0
                if options.val_every and self.epoch % options.val_every == 0:
                    self._validate()
        self.elapsed += time.perf_counter() - window_start
        self.save()
        return TrainResult(
            self.out, self.step, self.epoch, self.elapsed, last.get("loss", float("nan")),
            self.best_val,
        )  # fmt: skip

    # -------------------------------------------------------------- validation
    def ema_model(self) -> KLDM:
        model = KLDM(self.config).to(self.device)
        model.network.load_state_dict(self.ema.shadow)
        return model.eval()

    @torch.no_grad()
    def validation_loss(self) -> float:
        """EMA model's loss on the validation subset, with a fixed noise seed."""
        model = self.ema_model()
        generator = torch.Generator(device=self.device).manual_seed(12345)
        total, count = 0.0, 0
        for start in range(0, len(self.val_records), self.options.batch_size):
            chunk = self.val_records[start : start + self.options.batch_size]
            batch = CrystalBatch.from_records(chunk).to(self.device)
            total += float(model.loss(batch, generator=generator).total) * len(chunk)
            count += len(chunk)
        return total / max(count, 1)

    def validation_match_rate(self) -> float:
        """Match rate of one EMA sample per validation structure (CSP only)."""
        from kldm_cli.metrics.csp import match_structures
        from kldm_cli.predict import sample_model

        model = self.ema_model()
        compositions = [r.atomic_numbers.tolist() for r in self.val_records]
        candidates = sample_model(
            model, compositions, 1, method=self.options.val_sampler,
            steps=self.options.val_steps, seed=0, device=str(self.device),
        )  # fmt: skip
        targets = [r.to_structure() for r in self.val_records]
        return match_structures(candidates, targets).match_rate

    def _validate(self) -> None:
        if not self.val_records:
            return
        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        record["val_loss"] = self.validation_loss()
        score = -record["val_loss"]
        if self.config.task == "csp":
            record["val_match_rate"] = self.validation_match_rate()
            score = record["val_match_rate"]
        if self.best_val is None or score > self.best_val:
            self.best_val = score
            record["best"] = True
            self._write_model_folder(self.out / "best", {"steps": self.step, **record})
        self._log(record)


def train(
    options: TrainOptions, on_log: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Train (or resume) a KLDM model; see :class:`TrainOptions`."""
    return Trainer(options, on_log).run()

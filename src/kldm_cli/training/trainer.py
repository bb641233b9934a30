"""The training loop: :class:`Trainer` holds the model, optimizer, EMA and RNG of one run, and
:func:`train` runs it (see :mod:`kldm_cli.training` for what a run does and writes)."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kldm_cli.config import KLDMConfig
from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.readers import file_sha256, load_dataset
from kldm_cli.data.records import CrystalRecord
from kldm_cli.device import resolve_device
from kldm_cli.model import KLDM
from kldm_cli.training.card import model_card
from kldm_cli.training.checkpoint import load_checkpoint, save_checkpoint
from kldm_cli.training.dataset import (
    PackedCrystals,
    epoch_order,
    iterate_batches,
    select_by_atoms,
    shard_order,
    skipped_notes,
    steps_per_epoch,
)
from kldm_cli.training.distributed import (
    any_rank,
    barrier,
    gather_generator_states,
    is_distributed,
    join_process_group,
    leave_process_group,
    main_first,
    mean_over_ranks,
    wrap_ddp,
)
from kldm_cli.training.log import plot_training_log, truncate_log
from kldm_cli.training.options import (
    CHECKPOINT_NAME,
    LOG_NAME,
    PLOT_NAME,
    TrainOptions,
    TrainResult,
    build_config,
    check_options,
    command_line,
)
from kldm_cli.training.precision import _TrainingForward, check_bf16_support
from kldm_cli.training.schedule import EMA, learning_rate_at
from kldm_cli.training.validation import (
    select_val_records,
    validation_loss,
    validation_match_rate,
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
        self.dist, self._owns_process_group = join_process_group(options.device)
        self.device = resolve_device(
            options.device, self.dist.local_rank if is_distributed() else None
        )
        if options.precision == "bf16":
            check_bf16_support(self.device)
        if self.dist.is_main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"cannot create output folder {self.out}: {err}") from err

        # Rank 0 reads (and, the first time, parses and caches) the data before the others.
        with main_first(self.dist, self.device):
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
        barrier(self.device)  # every rank has looked before rank 0 writes config.json
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
                truncate_log(self.out / LOG_NAME, self.step, self.epoch)
        self._wrap_network()
        self._stop = _StopFlag()
        self._clock = time.perf_counter()

    # -------------------------------------------------------------- distributed plumbing
    def close(self) -> None:
        """Leave the process group if this trainer created it.

        The DDP wrapper goes first: it holds the group, and a group that outlives
        ``destroy_process_group`` is torn down whenever the trainer is freed, which for a
        trainer caught in a reference cycle can be at interpreter exit, where Gloo's threads
        abort the process (SIGABRT, "terminate called without an active exception").
        """
        if self._owns_process_group and is_distributed():
            self.model.network = self.network
            leave_process_group()
        self._owns_process_group = False

    def _wrap_network(self) -> None:
        """Route the training forward through DDP and/or autocast (nothing to do otherwise)."""
        network = wrap_ddp(self.network, self.device)
        autocast = torch.bfloat16 if self.options.precision == "bf16" else None
        if network is not self.network or autocast is not None:
            self.model.network = _TrainingForward(network, autocast)

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
        """The fixed validation subset (see :func:`select_val_records`); empty without --val."""
        options = self.options
        if options.val is None:
            return []
        with main_first(self.dist, self.device):
            records = load_dataset(options.val, cache_dir=options.cache_dir).records
        return select_val_records(records, self.config, options.val_subset, self.notes)

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

    def save(self) -> None:
        """Write the checkpoint, the EMA model folder and the plot (rank 0; a collective under
        DDP: every rank must call it)."""
        self._tick()
        rank_states = gather_generator_states(self.generator, self.device, self.dist.world_size)
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
        losses = mean_over_ranks(losses, self.device, self.dist.world_size)
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
                    if any_rank(self._stop.requested, self.device):
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
            barrier(self.device)

    # -------------------------------------------------------------- validation
    def ema_model(self) -> KLDM:
        """A fresh model holding the EMA weights, in eval mode, on the training device."""
        model = KLDM(self.config).to(self.device)
        model.network.load_state_dict(self.ema.shadow)
        return model.eval()

    def validation_loss(self) -> float:
        """EMA model's loss on the validation subset, with a fixed noise seed."""
        model = self.ema_model()
        return validation_loss(model, self.val_records, self.options.batch_size, self.device)

    def validation_match_rate(self) -> float:
        """Match rate of one EMA sample per validation structure (CSP only), see
        :func:`~kldm_cli.training.validation.validation_match_rate`."""
        options = self.options
        return validation_match_rate(
            self.ema_model(), self.val_records, options.val_sampler, options.val_steps,
            options.val_workers, self.device,
        )  # fmt: skip

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

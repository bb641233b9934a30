"""``kldm train``: train (or resume) a CSP or DNG model from a CDVAE-style CSV.

Under ``torchrun`` every process runs this command; only rank 0 prints (see docs/training.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kldm_cli.cli import options
from kldm_cli.cli.common import console, err_console, user_errors

if TYPE_CHECKING:
    from kldm_cli.training import Trainer

#: Exit status of a run stopped by Ctrl-C / SIGTERM (after its checkpoint was written).
INTERRUPTED_EXIT = 130


def train_command(
    data: Path = typer.Option(..., "--data", help="Training CSV (column 'cif'), plain or .gz."),
    out: Path = typer.Option(..., "--out", help="Run folder; resumed if it holds a checkpoint."),
    val: Path | None = typer.Option(None, "--val", help="Validation CSV for loss / match rate."),
    task: str = typer.Option("csp", "--task", help="csp (composition given) or dng (de novo)."),
    preset: str = typer.Option(
        "small", "--preset", help="Network size: tiny, small, medium or paper."
    ),
    types: str = typer.Option("d", "--types", help="DNG atom types: c (one-hot), c-ab, d (mask)."),
    epochs: int = typer.Option(100, "--epochs", min=1, help="Epochs to train (total, not more)."),
    max_steps: int | None = typer.Option(
        None, "--max-steps", min=1, help="Stop after this many steps."
    ),
    batch_size: int = typer.Option(
        256, "--batch-size", min=1, help="Crystals per batch and process (torchrun: per GPU)."
    ),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    lr_schedule: str = typer.Option("constant", "--lr-schedule", help="constant or cosine."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Linear LR warm-up steps."),
    decay_start: int = typer.Option(
        0, "--decay-start", min=0, help="Step where the cosine starts (0: after the warm-up)."
    ),
    seed: int = typer.Option(42, "--seed", help="Seed of data order and noise."),
    device: str = typer.Option(
        "cpu", "--device", help="cpu or cuda (under torchrun: cuda = the GPU of LOCAL_RANK)."
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="fp32, or bf16 autocast of the network (CUDA, or a CPU with AMX / AVX-512 BF16).",
    ),
    checkpoint_every: int = typer.Option(
        500, "--checkpoint-every", min=1, help="Steps between checkpoints (and plot updates)."
    ),
    log_every: int = typer.Option(25, "--log-every", min=1, help="Steps between log lines."),
    val_every: int = typer.Option(
        0, "--val-every", min=0, help="Epochs between validations (0: never; needs --val)."
    ),
    val_subset: int = typer.Option(
        64, "--val-subset", min=1, help="Validation structures used (a fixed random subset)."
    ),
    val_steps: int = typer.Option(
        100, "--val-steps", min=0, help="Sampling steps for the val match rate (0: loss only)."
    ),
    val_sampler: str = typer.Option(
        "em", "--val-sampler", help="Sampler for the val match rate: em or pc."
    ),
    val_workers: int = typer.Option(
        2, "--val-workers", min=0, help="Processes matching structures in validation (0: none)."
    ),
    plot: bool = typer.Option(
        True, "--plot/--no-plot", help="Write training_curves.png at every checkpoint."
    ),
    max_atoms: int | None = typer.Option(
        None,
        "--max-atoms",
        min=1,
        help="Leave out training crystals with more atoms (default: 100, with a note).",
    ),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="Model folder to fine-tune: its weights, network size and elements are kept.",
    ),
    cache_dir: Path | None = options.cache_dir(),
    threads: int | None = options.threads(),
) -> None:
    """Train a KLDM model; the output folder is a model folder for [bold]--weights[/].

    Ctrl-C finishes the current step, writes a checkpoint and exits; the same command resumes.
    Several GPUs: [bold]torchrun --nproc_per_node N -m kldm_cli train --device cuda ...[/]
    """
    from kldm_cli.threads import set_threads
    from kldm_cli.training import LOG_NAME, PLOT_NAME, Trainer, TrainOptions, distributed_from_env

    set_threads(threads)  # before anything else runs torch
    options = TrainOptions(
        data=data, out=out, val=val, task=task, preset=preset, types=types, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, learning_rate=lr, lr_schedule=lr_schedule,
        warmup_steps=warmup_steps, decay_start=decay_start, seed=seed, device=device,
        precision=precision,
        checkpoint_every=checkpoint_every, log_every=log_every, val_every=val_every,
        val_subset=val_subset, val_steps=val_steps, val_sampler=val_sampler,
        val_workers=val_workers, plot=plot, max_atoms=max_atoms, cache_dir=cache_dir,
        init_from=init_from,
    )  # fmt: skip
    trainer: Trainer | None = None
    try:
        with user_errors():
            launch = distributed_from_env()
            quiet = launch is not None and not launch.is_main
            with nullcontext() if quiet else console.status("reading data…"):
                trainer = Trainer(options)
            main = trainer.dist.is_main
            if main:
                _print_start(trainer, preset)
            progress = Progress(
                TextColumn("[bold]train"), BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not main,
            )  # fmt: skip
            with progress:
                bar = progress.add_task(
                    "train", total=trainer.total_steps, completed=trainer.step, info=""
                )
                epoch_info = {"text": ""}

                def on_log(record: dict) -> None:
                    if "loss" in record:
                        info = f"loss {record['loss']:.4f}  {record['steps_per_s']:.2f} it/s"
                        progress.update(
                            bar, completed=record["step"], info=info + epoch_info["text"]
                        )
                    elif "val_loss" in record:
                        shown = {
                            k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
                        }
                        progress.console.print(shown)
                    elif record.get("epoch_seconds") is not None:
                        epoch_info["text"] = f"  {record['epoch_seconds']:.1f} s/epoch"

                trainer.on_log = on_log
                result = trainer.run()
                progress.update(bar, completed=result.steps)
    except KeyboardInterrupt:
        # A second Ctrl-C (or one before training started): stop without writing anything.
        step = trainer.step if trainer is not None else 0
        err_console.print(
            "[yellow]Interrupted[/] without saving; the last checkpoint in "
            f"{out} (if any) is kept. Current step was {step}."
        )
        raise typer.Exit(code=INTERRUPTED_EXIT) from None
    if not main:
        raise typer.Exit(code=INTERRUPTED_EXIT if result.interrupted else 0)
    for note in trainer.notes:
        console.print(f"[yellow]Note:[/] {note}", highlight=False)
    plot_note = f", curves {out / PLOT_NAME}" if (out / PLOT_NAME).exists() else ""
    if result.interrupted:
        console.print(
            f"[yellow]Interrupted[/] at step {result.steps} (epoch {result.epochs}); checkpoint "
            f"saved in {out}, nothing lost. Run the same command to resume."
        )
        raise typer.Exit(code=INTERRUPTED_EXIT)
    console.print(
        f"[green]Done[/]: {result.steps} steps, {result.epochs} epochs, {result.seconds:.0f} s; "
        f"model folder {result.out} (log {out / LOG_NAME}{plot_note})"
    )


def _print_start(trainer: Trainer, preset: str) -> None:
    options = trainer.options
    if trainer.resumed:
        console.print(f"Resuming {options.out} at step {trainer.step} (epoch {trainer.epoch}).")
    world = trainer.dist.world_size
    launch = f", {world} processes × batch {options.batch_size}" if world > 1 else ""
    console.print(
        f"{len(trainer.records)} training structures ({trainer.skipped} skipped), "
        f"{len(trainer.config.elements)} elements, task {trainer.config.task}, "
        f"preset {trainer.config.provenance.get('preset', preset)}, {trainer.device} "
        f"{options.precision}{launch}."
    )
    if options.init_from is not None and not trainer.resumed:
        console.print(f"Fine-tuning from {options.init_from}.")
    if trainer.val_records and options.val_every:
        console.print(
            f"Validation every {options.val_every} epoch(s) on {len(trainer.val_records)} "
            f"structures ({options.val_sampler}, {options.val_steps} steps)."
        )
    for note in trainer.notes:
        console.print(f"[yellow]Note:[/] {note}", highlight=False)
    trainer.notes.clear()

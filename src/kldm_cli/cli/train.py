"""``kldm train``: train (or resume) a CSP or DNG model from a CDVAE-style CSV."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kldm_cli.cli.common import console, user_errors


def train_command(
    data: Path = typer.Option(..., "--data", help="Training CSV (column 'cif'), plain or .gz."),
    out: Path = typer.Option(..., "--out", help="Run folder; resumed if it holds a checkpoint."),
    val: Path | None = typer.Option(None, "--val", help="Validation CSV for loss / match rate."),
    task: str = typer.Option("csp", "--task", help="csp (composition given) or dng (de novo)."),
    preset: str = typer.Option("small", "--preset", help="Network size: tiny, small or paper."),
    types: str = typer.Option("d", "--types", help="DNG atom types: c (one-hot), c-ab, d (mask)."),
    epochs: int = typer.Option(100, "--epochs", min=1, help="Epochs to train (total, not more)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many steps."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Crystals per batch."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    lr_schedule: str = typer.Option("constant", "--lr-schedule", help="constant or cosine."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear LR warm-up steps."),
    seed: int = typer.Option(42, "--seed", help="Seed of data order and noise."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    checkpoint_every: int = typer.Option(
        500, "--checkpoint-every", min=1, help="Steps between checkpoints."
    ),
    log_every: int = typer.Option(25, "--log-every", min=1, help="Steps between log lines."),
    val_every: int = typer.Option(0, "--val-every", help="Epochs between validations (0: never)."),
    val_subset: int = typer.Option(256, "--val-subset", help="Validation structures used."),
    val_steps: int = typer.Option(
        200, "--val-steps", help="Sampling steps for the val match rate."
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
) -> None:
    """Train a KLDM model; the output folder is a model folder for [bold]--weights[/]."""
    import torch

    from kldm_cli.train import Trainer, TrainOptions

    if threads:
        torch.set_num_threads(threads)
    options = TrainOptions(
        data=data, out=out, val=val, task=task, preset=preset, types=types, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, learning_rate=lr, lr_schedule=lr_schedule,
        warmup_steps=warmup_steps, seed=seed, device=device, checkpoint_every=checkpoint_every,
        log_every=log_every, val_every=val_every, val_subset=val_subset, val_steps=val_steps,
    )  # fmt: skip
    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console,
    )  # fmt: skip
    with user_errors():
        with console.status("reading data…"):
            trainer = Trainer(options)
        if trainer.resumed:
            console.print(f"Resuming {out} at step {trainer.step} (epoch {trainer.epoch}).")
        console.print(
            f"{len(trainer.records)} training structures ({trainer.skipped} skipped), "
            f"{len(trainer.config.elements)} elements, task {trainer.config.task}, "
            f"preset {preset}."
        )
        with progress:
            bar = progress.add_task(
                "train", total=trainer.total_steps, completed=trainer.step, info=""
            )

            def on_log(record: dict) -> None:
                if "loss" in record:
                    info = f"loss {record['loss']:.4f}  {record['steps_per_s']:.2f} it/s"
                    progress.update(bar, completed=record["step"], info=info)
                else:
                    progress.console.print(
                        {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
                    )

            trainer.on_log = on_log
            result = trainer.run()
            progress.update(bar, completed=result.steps)
    console.print(
        f"[green]Done[/]: {result.steps} steps, {result.epochs} epochs, {result.seconds:.0f} s; "
        f"model folder {result.out}"
    )

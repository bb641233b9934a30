"""``kldm generate``: de novo generation of complete crystals."""

from __future__ import annotations

from pathlib import Path

import typer

from kldm_cli.cli import options
from kldm_cli.cli.common import (
    SamplingProgress,
    check_count_and_sampler,
    console,
    err_console,
    user_errors,
)


def generate_command(
    n: int = typer.Option(100, "--n", "-n", help="Number of crystals to generate."),
    weights: str | None = options.weights(),
    out: Path = typer.Option(Path("samples"), "--out", help="Output folder."),
    fmt: str = options.output_format(),
    sampler: str | None = options.sampler(),
    steps: int | None = options.steps(),
    seed: int = options.seed("crystals"),
    device: str = options.device(),
    num_atoms: str | None = typer.Option(
        None, "--num-atoms", help="Atoms per cell: N or LOW-HIGH."
    ),
    batch_atoms: int = options.batch_atoms(),
    grid: str | None = options.grid(),
    threads: int | None = options.threads(),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
) -> None:
    """Generate new crystals (species, coordinates and lattice).

    Under [bold]torchrun --nproc-per-node K[/] the batches are shared out over the K processes
    (the same files as one process; rank 0 prints the summary).
    """
    from kldm_cli.evaluation.metrics.validity import structural_validity
    from kldm_cli.generate import generate
    from kldm_cli.sampling.shards import shard_from_env

    check_count_and_sampler(n, "--n", sampler)
    with user_errors():
        shard = shard_from_env()
    with user_errors(), SamplingProgress("generate", n, show=shard.is_main) as progress:
        result = generate(
            n, weights=weights, out=out, fmt=fmt, method=sampler, steps=steps, seed=seed,
            device=device, num_atoms=num_atoms, batch_atoms=batch_atoms, resume=resume,
            on_written=progress.on_written, grid=grid, threads=threads, on_step=progress.on_step,
            shard=shard,
        )  # fmt: skip
    if not shard.is_main:
        return
    if result.notice:
        err_console.print(result.notice)
    structures = result.all_structures
    valid = sum(structural_validity(s) for s in structures)
    console.print(
        f"[green]{result.written + len(result.other_ranks)}[/] new structures in {out}"
        + (f" ({result.skipped_existing} kept from before)" if result.skipped_existing else "")
        + f"; structurally valid: {valid}/{len(structures) + result.kept_unreadable}"
        + (" (the whole folder)" if result.skipped_existing else "")
        + f"; distinct compositions: {len(result.composition_counts())}"
    )
    for formula, count in result.composition_counts().most_common(10):
        console.print(f"  {formula}: {count}")

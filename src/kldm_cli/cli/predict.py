"""``kldm predict``: crystal structure prediction for a formula."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from kldm_cli.cli.common import (
    SamplingProgress,
    batch_atoms_option,
    check_count_and_sampler,
    console,
    err_console,
    grid_option,
    threads_option,
    user_errors,
)


def predict_command(
    formula: str = typer.Option(
        ..., "--formula", "-f", help="Formula as written, e.g. LiFePO4 (7 atoms)."
    ),
    n: int = typer.Option(20, "-n", "--n", help="Number of candidate structures."),
    weights: str | None = typer.Option(
        None, "--weights", help="Model folder, hf://OWNER/REPO\\[@REV] or release name."
    ),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder."),
    fmt: str = typer.Option("cif", "--format", help="cif (one file each) or extxyz (one file)."),
    sampler: str | None = typer.Option(None, "--sampler", help="pc or em (default: the model's)."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Sampling steps (default: the model's)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed; the same seed gives the same structures."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    formula_units: str = typer.Option("1", "--formula-units", help="Z: an integer, or 'auto'."),
    batch_atoms: int = batch_atoms_option(),
    grid: str | None = grid_option(),
    threads: int | None = threads_option(),
    relax: bool = typer.Option(False, "--relax", help="Relax with CHGNet and rank by energy."),
) -> None:
    """Predict crystal structures for a composition."""
    from kldm_cli.predict import predict

    check_count_and_sampler(n, "-n", sampler)
    with user_errors(), SamplingProgress("predict", n) as progress:
        result = predict(
            formula, n, weights=weights, out=out, fmt=fmt, method=sampler, steps=steps,
            seed=seed, device=device, formula_units=formula_units, batch_atoms=batch_atoms,
            relax=relax, on_batch=progress.on_batch, grid=grid, threads=threads,
            on_step=progress.on_step,
        )  # fmt: skip
    if result.notice:
        err_console.print(result.notice)
    if result.formula_warning:
        err_console.print(f"[yellow]Warning:[/] {result.formula_warning}", highlight=False)
    table = Table(
        title=f"{len(result.structures)} candidates for {formula}",
        caption="not charge-balanced: check the formula" if result.formula_warning else None,
    )
    for column in ("#", "formula", "volume (Å³)", "density (g/cm³)", "file"):
        table.add_column(column)
    for i, (structure, path) in enumerate(zip(result.structures, result.files, strict=True)):
        table.add_row(
            str(i), structure.composition.formula.replace(" ", ""), f"{structure.volume:.1f}",
            f"{structure.density:.2f}", str(path),
        )  # fmt: skip
    console.print(table)
    if result.ranking is not None:
        from kldm_cli.cli.relax import print_ranking

        print_ranking(result.ranking)

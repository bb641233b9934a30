"""``kldm predict``: crystal structure prediction for a formula."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from kldm_cli.cli import options
from kldm_cli.cli.common import (
    SamplingProgress,
    check_count_and_sampler,
    console,
    err_console,
    user_errors,
)
from kldm_cli.cli.relax import missing_extra

if TYPE_CHECKING:
    from kldm_cli.predict import PredictResult


def predict_command(
    formula: str = typer.Option(
        ..., "--formula", "-f", help="Formula as written, e.g. LiFePO4 (7 atoms)."
    ),
    n: int = typer.Option(20, "-n", "--n", help="Number of candidate structures."),
    weights: str | None = options.weights(),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder."),
    fmt: str = options.output_format(),
    sampler: str | None = options.sampler(),
    steps: int | None = options.steps(),
    seed: int = options.seed("structures"),
    device: str = options.device(),
    formula_units: str = typer.Option("1", "--formula-units", help="Z: an integer, or 'auto'."),
    batch_atoms: int = options.batch_atoms(),
    grid: str | None = options.grid(),
    threads: int | None = options.threads(),
    relax: bool = typer.Option(
        False, "--relax", help="Relax all -n samples with CHGNet and write them ranked by energy."
    ),
    candidates: int | None = typer.Option(
        None,
        "--candidates",
        min=1,
        help="Search mode: sample this many cheap candidates (EM 100 steps, power:3 grid unless "
        "--sampler/--steps/--grid), drop duplicates, relax the --screen lowest in CHGNet energy "
        "and write the best -n ranked by energy per atom. Needs the [relax] extra.",
    ),
    screen: int = options.screen(
        "Search mode: unique candidates relaxed, lowest single-point energy first (0: all)."
    ),
    relax_steps: int = options.relax_steps("Most FIRE steps per relaxation."),
    fmax: float = typer.Option(0.1, "--fmax", help="Relaxation stops below this force (eV/Å)."),
    workers: int = typer.Option(
        1, "--workers", min=0, help="Processes relaxing candidates in parallel (CPU)."
    ),
    frequency_weight: float = options.frequency_weight(),
) -> None:
    """Predict crystal structures for a composition.

    With [bold]--candidates N[/] (search mode) the best -n of N relaxed candidates are written as
    rank_001_<formula>.cif ... with summary.csv; the unrelaxed candidates go to OUT/candidates/.
    """
    from kldm_cli.evaluation.search import SearchSettings
    from kldm_cli.predict import predict

    check_count_and_sampler(n, "-n", sampler)
    search = None
    if candidates is not None:
        if candidates < n:
            raise typer.BadParameter(
                f"--candidates {candidates} is fewer than the -n {n} structures to write",
                param_hint="--candidates",
            )
        search = SearchSettings(
            candidates=candidates, screen=screen, relax_steps=relax_steps, fmax=fmax,
            workers=workers, frequency_weight=frequency_weight,
        )  # fmt: skip
    elif relax:
        search = SearchSettings(
            candidates=n, sampler=None, steps=None, grid=None, screen=0,
            relax_steps=relax_steps, fmax=fmax, workers=workers, frequency_weight=frequency_weight,
        )  # fmt: skip
    with user_errors(), missing_extra(), SamplingProgress("predict", candidates or n) as progress:
        result = predict(
            formula, n, weights=weights, out=out, fmt=fmt, method=sampler, steps=steps,
            seed=seed, device=device, formula_units=formula_units, batch_atoms=batch_atoms,
            on_written=progress.on_written, grid=grid, threads=threads, on_step=progress.on_step,
            search=search, on_stage=progress.on_stage,
        )  # fmt: skip
    if result.notice:
        err_console.print(result.notice)
    for route in result.routes:
        err_console.print(f"Model: {route}", highlight=False)
    if result.formula_warning:
        err_console.print(f"[yellow]Warning:[/] {result.formula_warning}", highlight=False)
    if result.search is not None:
        print_search(result, formula, n, out)
        return
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


def print_search(result: PredictResult, formula: str, n: int, out: Path) -> None:
    """The ranked structures of a search as a table, and what happened to the candidates."""
    search = result.search
    order = (
        f"lowest eV/atom - {search.frequency_weight:g} ln(samples) first"
        if search.frequency_weight
        else "lowest energy first"
    )
    table = Table(
        title=f"Best {min(n, len(search.ranking))} of {len(search.candidates)} "
        f"candidates for {formula}, relaxed with CHGNet ({order})"
    )
    columns = [
        "rank", "sample", "samples", "space group", "eV/atom", "above best", "steps", "converged"
    ]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "space group" else "right")
    for entry in search.ranking[:n]:
        table.add_row(
            str(entry.rank), str(entry.sample_index), str(entry.samples), entry.spacegroup or "?",
            f"{entry.energy_per_atom:.4f}", f"{entry.energy_above_best:+.4f}",
            str(entry.relax_steps), "yes" if entry.converged else "no",
        )  # fmt: skip
    console.print(table)
    counts = ", ".join(f"{count} {status}" for status, count in search.counts().items())
    timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in search.timing_s.items())
    console.print(f"Candidates: {counts}. Time: {timing}.", highlight=False)
    files = ", ".join(path.name for path in result.ranked_files)
    console.print(
        f"Written to {out}: {files}, {result.summary.name}; unrelaxed candidates in "
        f"{Path(out) / 'candidates'}.",
        highlight=False,
    )

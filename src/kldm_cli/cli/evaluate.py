"""``kldm evaluate csp`` / ``kldm evaluate dng``: benchmark numbers with a full JSON record."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.table import Table

from kldm_cli.cli import options
from kldm_cli.cli.common import console, err_console, user_errors
from kldm_cli.cli.relax import missing_extra

app = typer.Typer(
    help="Benchmark models: CSP match rate / RMSE, DNG validity, novelty, coverage, stability.",
    no_args_is_help=True,
)


def _progress(message: str) -> None:
    err_console.print(f"[dim]… {message}[/]", highlight=False)


def _percent(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _number(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _warn_skipped(record: dict[str, Any]) -> None:
    """Say how many rows/files of each input could not be read (never silently dropped)."""
    for name, info in record["inputs"].items():
        if isinstance(info, dict) and info.get("num_skipped"):
            err_console.print(
                f"[yellow]{info['num_skipped']} structure(s) of --{name} ({info['path']}) could "
                "not be read and were left out[/]"
            )


def _stability_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows of the stability metrics (``kldm evaluate dng`` and ``combine``); records
    from before the hull was named show "—" for what they lack."""
    return [
        ("stable (E_hull ≤ 0.1 eV/atom)", _percent(metrics["stable_rate"])),
        ("S.U.N.", _percent(metrics["sun_rate"])),
        ("novel vs the known structures (S.U.N.)", _percent(metrics.get("novelty_vs_known"))),
        ("below the hull", _percent(metrics.get("below_hull_rate"))),
        ("below the hull by > 0.1 eV/atom", _percent(metrics.get("far_below_hull_rate"))),
        ("no hull (E_hull unknown)", str(metrics["num_hull_unknown"])),
    ]


def _print_hull(metrics: dict[str, Any]) -> None:
    """Name the hull under the table; the proxy hull's numbers are not the papers' (DFT on a
    full Materials Project hull)."""
    console.print(f"Hull: {metrics.get('hull') or 'not named (an older record)'}", highlight=False)
    if str(metrics.get("hull", "")).startswith("proxy hull"):
        err_console.print(
            "[yellow]stable and S.U.N. are measured on a proxy hull, not comparable with the "
            "papers' numbers; pass --reference-entries with Materials Project entries for "
            "those[/]"
        )


@app.command("csp")
def csp_command(
    data: Path = typer.Option(..., "--data", help="Test set: CDVAE-style CSV (.csv/.csv.gz)."),
    weights: str | None = options.weights(),
    k: int = typer.Option(1, "-k", min=1, help="Candidates per test composition (MR@k): 1 or 20."),
    limit: int | None = options.limit("test rows"),
    start: int = options.start("test row", "evaluate one chunk"),
    sampler: str = typer.Option("pc", "--sampler", help="pc (predictor-corrector) or em."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Sampling steps."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the sampler."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (sampling)."),
    grid: str | None = options.grid(),
    threads: int | None = options.threads(),
    batch_atoms: int = options.batch_atoms(),
    workers: int = typer.Option(2, "--workers", min=0, help="Matching processes (0: in-process)."),
    timeout: float = typer.Option(
        30.0, "--timeout", min=0.0, help="Seconds per candidate/target match; past it: no match."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the JSON record here."),
    rank: bool = typer.Option(
        False,
        "--rank",
        help="Also relax the -k candidates with CHGNet, rank them by energy (as predict "
        "--candidates) and report ranked top-1/3/5 next to MR@1 and MR@k. Needs [relax].",
    ),
    screen: int = options.screen("With --rank: unique candidates relaxed (0: all)."),
    relax_steps: int = options.relax_steps("With --rank: most FIRE steps per relaxation."),
    relax_workers: int = typer.Option(
        1, "--relax-workers", min=0, help="With --rank: relaxation processes."
    ),
    frequency_weight: float = options.frequency_weight(),
) -> None:
    """Crystal structure prediction: match rate and RMSE against a test set."""
    from kldm_cli.evaluation.csp_run import SAMPLERS, evaluate_csp
    from kldm_cli.evaluation.search import SearchSettings

    search = None
    if rank:
        search = SearchSettings(
            candidates=k, sampler=sampler, steps=steps, grid=grid, screen=screen,
            relax_steps=relax_steps, workers=relax_workers, frequency_weight=frequency_weight,
        )  # fmt: skip
    if sampler not in SAMPLERS:
        raise typer.BadParameter(f"choose pc or em, got {sampler!r}", param_hint="--sampler")
    if timeout <= 0:
        raise typer.BadParameter(f"must be positive, got {timeout}", param_hint="--timeout")
    try:
        with user_errors(), missing_extra():
            record = evaluate_csp(
                data, weights=weights, k=k, limit=limit, start=start, sampler=sampler,
                steps=steps, seed=seed, device=device, grid=grid, threads=threads,
                batch_atoms=batch_atoms, workers=workers, timeout=timeout, out=out,
                progress=_progress, search=search,
            )  # fmt: skip
    except KeyboardInterrupt:
        _interrupted(out)
    _warn_skipped(record)
    _print_csp(record, f"CSP on {data.name} ({record['metrics']['num_targets']} targets, k = {k})")
    if out is not None:
        console.print(f"Record written to {out}")


def _interrupted(out: Path | None) -> NoReturn:
    """Ctrl-C during ``evaluate csp``: say what was kept (exit code 130)."""
    from kldm_cli.evaluation.candidate_log import log_path

    kept = out is not None and log_path(out).exists()
    hint = (
        f"the sampled batches are kept in {log_path(out)}; run the same command to go on"
        if kept
        else "nothing was kept (pass --out to keep the sampled batches)"
    )
    err_console.print(f"[bold yellow]Interrupted:[/] {hint}", highlight=False)
    raise typer.Exit(code=130)


def _print_csp(record: dict, title: str) -> None:
    """The table of a CSP record (``kldm evaluate csp`` and ``combine``)."""
    metrics, timing = record["metrics"], record["timing_s"]
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"match rate MR@{metrics['k']}", _percent(metrics["match_rate"]))
    table.add_row("RMSE (normalized)", _number(metrics["rmse"]))
    table.add_row("matched targets", f"{metrics['num_matched']} / {metrics['num_targets']}")
    table.add_row("invalid candidates", f"{metrics['num_invalid']} / {metrics['num_candidates']}")
    table.add_row("match timeouts", str(metrics["num_timeouts"]))
    table.add_row("matcher errors", str(metrics["num_errors"]))
    table.add_row("sampling time", f"{timing['sampling']:.1f} s")
    table.add_row("matching time", f"{timing['matching']:.1f} s")
    ranked = record.get("ranked")
    if ranked is not None:
        metrics = ranked["metrics"]
        labels = {
            "raw_mr_at_1": "raw MR@1", "raw_mr_at_k": f"raw MR@{record['metrics']['k']}",
            "ranked_top_1": "ranked top-1", "ranked_top_3": "ranked top-3",
            "ranked_top_5": "ranked top-5",
        }  # fmt: skip
        for key, label in labels.items():
            table.add_row(
                label,
                f"{_percent(metrics[key]['match_rate'])} (RMSE {_number(metrics[key]['rmse'])})",
            )
        for name, seconds in metrics["search_seconds_per_composition"].items():
            table.add_row(f"{name} per composition", f"{seconds:.1f} s")
        stages = metrics.get("right_structure_stages")
        if stages and stages["num_targets"]:
            table.add_row(
                "right structure: sampled / kept by screen / ranked 1st",
                f"{stages['sampled']} / {stages['kept_by_screen']} / {stages['ranked_first']}"
                f" of {stages['num_targets']}",
            )
    console.print(table)


@app.command("dng")
def dng_command(
    samples: Path = typer.Option(
        ..., "--samples", help="Generated structures: a folder of .cif files, .extxyz or CSV."
    ),
    reference: Path = typer.Option(
        ..., "--reference", help="Training set (novelty, composition scaler, convex hull)."
    ),
    test: Path | None = typer.Option(
        None,
        "--test",
        help="Held-out set for coverage and Wasserstein distances, as in CDVAE "
        "(default: --reference; CrystalNN fingerprints take ~0.5 s per structure).",
    ),  # fmt: skip
    limit: int | None = options.limit("samples"),
    start: int = options.start("sample", "score one chunk"),
    stability: bool = typer.Option(
        True, "--stability/--no-stability", help="CHGNet relaxation, E_hull, stable and S.U.N. %."
    ),
    hull_reference: list[Path] | None = typer.Option(
        None,
        "--hull-reference",
        help="Build the proxy hull from these files instead of --reference (repeatable); "
        "S.U.N. novelty is checked against them and --reference.",
    ),  # fmt: skip
    reference_entries: Path | None = typer.Option(
        None,
        "--reference-entries",
        help="DFT reference for the hull and S.U.N. novelty instead of the proxy hull: JSON of "
        "pymatgen ComputedStructureEntry objects (list, MP-API 'data' or matbench-discovery "
        "'entry' shape) or CSV with cif and energy_per_atom / energy columns; .gz optional. "
        "MP2020 corrections where entries carry run_type.",
    ),  # fmt: skip
    relax_steps: int = typer.Option(500, "--relax-steps", min=0, help="CHGNet steps per sample."),
    reference_relax_steps: int = typer.Option(
        0,
        "--reference-relax-steps",
        min=0,
        help="CHGNet steps per hull structure (0: single point on the stored structure).",
    ),  # fmt: skip
    elemental_crystals: bool = typer.Option(
        True,
        "--elemental-crystals/--no-elemental-crystals",
        help="Add ASE's crystal of each sample element (bcc Fe, hcp Ti, ...), relaxed with "
        "CHGNet, to the hull's elemental references.",
    ),  # fmt: skip
    dataset_name: str = typer.Option(
        "mp_20", "--dataset", help="Coverage cutoffs: mp_20, carbon_24 or perov_5."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (CHGNet)."),
    threads: int | None = options.threads(),
    workers: int = typer.Option(2, "--workers", min=0, help="Worker processes (0: in-process)."),
    timeout: float = typer.Option(
        120.0, "--timeout", min=0.0, help="Seconds per matching/fingerprint task."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the JSON record here."),
) -> None:
    """De novo generation: validity, uniqueness, novelty, coverage, Wasserstein, stability."""
    from kldm_cli.evaluation.dng_run import evaluate_dng

    if timeout <= 0:
        raise typer.BadParameter(f"must be positive, got {timeout}", param_hint="--timeout")
    with user_errors(), missing_extra():
        record = evaluate_dng(
            samples, reference, test=test, limit=limit, start=start, stability=stability,
            hull_reference=hull_reference or None, reference_entries=reference_entries,
            relax_steps=relax_steps,
            reference_relax_steps=reference_relax_steps, elemental_crystals=elemental_crystals,
            dataset_name=dataset_name, device=device, threads=threads,
            workers=workers, timeout=timeout, out=out, progress=_progress,
        )  # fmt: skip
    _warn_skipped(record)
    metrics = record["metrics"]
    table = Table(title=f"DNG: {metrics['num_samples']} samples from {samples.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("structural validity", _percent(metrics["structural_validity"])),
        ("compositional validity", _percent(metrics["compositional_validity"])),
        ("uniqueness", _percent(metrics["uniqueness"])),
        ("novelty", _percent(metrics["novelty"])),
        ("COV-R", _percent(metrics["cov_recall"])),
        ("COV-P", _percent(metrics["cov_precision"])),
        ("W density (g/cm³)", _number(metrics["wdist_density"])),
        ("W #elements", _number(metrics["wdist_num_elements"])),
    ]
    if stability:
        rows += _stability_rows(metrics)
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if stability:
        _print_hull(metrics)
    if out is not None:
        console.print(f"Record written to {out}")


@app.command("combine")
def combine_command(
    parts: list[Path] = typer.Argument(
        ...,
        help="Records of chunks: CSP rows (kldm evaluate csp --start/--limit, or one CSV per "
        "chunk) or DNG stability (kldm evaluate dng --start/--limit).",
    ),
    out: Path = typer.Option(..., "--out", help="Write the combined JSON record here."),
    base: Path | None = typer.Option(
        None,
        "--base",
        help="DNG: record of the whole sample set (usually made with --no-stability).",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="CSP: the whole test file; needed when the chunks were cut from it as files.",
    ),
) -> None:
    """Merge records made in chunks: CSP match rates, or DNG stability into the whole set."""
    from kldm_cli.evaluation.combine import load_records
    from kldm_cli.evaluation.records import write_record

    with user_errors():
        part_records = load_records(parts)
        if part_records and part_records[0].get("task") == "csp":
            record = _combine_csp(part_records, parts, base, data)
        else:
            record = _combine_dng(part_records, parts, base, data)
        write_record(record, out)
    if record["task"] == "csp":
        metrics = record["metrics"]
        _print_csp(
            record, f"CSP: {metrics['num_targets']} targets from {len(parts)} records, "
            f"k = {metrics['k']}"
        )  # fmt: skip
    else:
        _print_combined_stability(record, len(parts))
    console.print(f"Record written to {out}")


def _combine_csp(records: list[dict], paths: list[Path], base: Path | None, data: Path | None):
    from kldm_cli.evaluation.combine import combine_csp_records

    if base is not None:
        raise typer.BadParameter(
            "CSP records are combined without a base record", param_hint="--base"
        )
    return combine_csp_records(records, part_names=[str(p) for p in paths], data=data)


def _combine_dng(records: list[dict], paths: list[Path], base: Path | None, data: Path | None):
    from kldm_cli.evaluation.combine import combine_dng_records, load_records

    if data is not None:
        raise typer.BadParameter(
            "--data is for CSP records; DNG chunks take --base", param_hint="--data"
        )
    if base is None:
        raise typer.BadParameter(
            "DNG stability chunks need the whole set's record", param_hint="--base"
        )
    (base_record,) = load_records([base])
    return combine_dng_records(
        base_record, records, base_name=str(base), part_names=[str(p) for p in paths]
    )


def _print_combined_stability(record: dict, num_parts: int) -> None:
    metrics = record["metrics"]
    table = Table(
        title=f"DNG stability: {metrics['num_stability_samples']} of {metrics['num_samples']} "
        f"samples from {num_parts} records"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = _stability_rows(metrics)
    rows.append(("mean E_hull of the known (eV/atom)", _number(metrics["mean_e_above_hull"])))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    _print_hull(metrics)


@app.command("compare")
def compare_command(
    first: Path = typer.Argument(..., help="Record A (kldm evaluate csp, dng or combine)."),
    second: Path = typer.Argument(
        ..., help="Record B of the same task: CSP on the same test rows, DNG of as many samples."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the comparison as JSON here."),
) -> None:
    """Compare two records pairwise (exact McNemar test): CSP target by target, DNG sample by
    sample (validity, stability, S.U.N.)."""
    from kldm_cli.evaluation.combine import load_records
    from kldm_cli.evaluation.compare import compare_records
    from kldm_cli.evaluation.records import write_record

    with user_errors():
        record_a, record_b = load_records([first, second])
        result = compare_records(record_a, record_b, names=(str(first), str(second)))
        if out is not None:
            write_record(result, out)
    if result["task"] == "dng":
        _print_dng_comparison(result)
    else:
        _print_comparison(result)
    _warn_comparison(result)
    if out is not None:
        console.print(f"Comparison written to {out}")


@app.command("breakdown")
def breakdown_command(
    record: Path = typer.Argument(..., help="A CSP record (kldm evaluate csp or combine)."),
    data: Path | None = typer.Option(
        None, "--data", help="The record's test file: adds the split by atoms in the cell."
    ),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        help="Training data: adds the split by whether a target's composition occurs in it.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the breakdown as JSON here."),
) -> None:
    """Match rate of a CSP record split by number of elements, atoms in the cell (--data) and
    compositions seen in the training data (--reference), with standard errors."""
    from kldm_cli.data.readers import load_dataset
    from kldm_cli.evaluation.breakdown import breakdown_csp_record, reference_formulas_of
    from kldm_cli.evaluation.combine import load_records
    from kldm_cli.evaluation.records import write_record

    with user_errors():
        (loaded,) = load_records([record])
        result = breakdown_csp_record(
            loaded,
            name=str(record),
            data=None if data is None else load_dataset(data),
            data_name=str(data),
            reference_formulas=None if reference is None else reference_formulas_of(reference),
        )
        if out is not None:
            write_record(result, out)
    _print_breakdown(result)
    if out is not None:
        console.print(f"Breakdown written to {out}")


def _print_breakdown(result: dict[str, Any]) -> None:
    from kldm_cli.evaluation.breakdown import SPLITS

    title = (
        f"MR@{result['k']} of {result['name']}: {_percent(result['match_rate'])} over "
        f"{result['num_targets']} targets"
    )
    table = Table(title=title)
    for column in ("group", "targets", "matched", "match rate", "± s.e.", "RMSE"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for split, groups in result["splits"].items():
        table.add_section()
        table.add_row(f"[bold]by {SPLITS[split]}[/]", "", "", "", "", "")
        for g in groups:
            table.add_row(
                g["group"], str(g["num_targets"]), str(g["num_matched"]),
                _percent(g["match_rate"]), _percent(g["stderr"]), _number(g["rmse"]),
            )  # fmt: skip
    console.print(table)


def _print_comparison(result: dict[str, Any]) -> None:
    n = result["num_targets"]
    table = Table(title=f"CSP, paired over {n} targets")
    table.add_column("")
    table.add_column("value", justify="right")
    for side, name in zip("AB", result["names"], strict=True):
        table.add_row(side, name)
    for side, matched in zip("AB", result["num_matched"], strict=True):
        table.add_row(f"{side} matched", f"{matched} / {n} ({_percent(matched / n)})")
    table.add_row("matched by both", str(result["num_both"]))
    table.add_row("only A / only B", f"{result['num_only_a']} / {result['num_only_b']}")
    table.add_row("B − A", f"{100 * result['difference']:+.2f} points")
    table.add_row("exact McNemar p (two-sided)", f"{result['p_value']:.3g}")
    console.print(table)


#: Row labels of the DNG outcomes.
_OUTCOME_LABELS = {"valid": "valid", "stable": "stable", "sun": "S.U.N."}


def _print_dng_comparison(result: dict[str, Any]) -> None:
    for side, name in zip("AB", result["names"], strict=True):
        console.print(f"{side}: {name}", highlight=False)
    table = Table(title=f"DNG, paired by sample index ({result['num_samples']} samples in both)")
    for column in ("", "paired", "A", "B", "both", "only A / only B", "B − A", "McNemar p"):
        table.add_column(column, justify="left" if not column else "right")
    for outcome, c in result["outcomes"].items():
        table.add_row(
            _OUTCOME_LABELS.get(outcome, outcome), str(c["num_paired"]),
            _percent(c["rate"][0]), _percent(c["rate"][1]), str(c["num_both"]),
            f"{c['num_only_a']} / {c['num_only_b']}", f"{100 * c['difference']:+.2f} points",
            f"{c['p_value']:.3g}",
        )  # fmt: skip
    console.print(table)
    sets = Table(title="Set-level metrics (not paired)")
    for column in ("metric", "A", "B"):
        sets.add_column(column, justify="left" if column == "metric" else "right")
    for key, (value_a, value_b) in result["set_metrics"].items():
        sets.add_row(key, _number(value_a), _number(value_b))
    console.print(sets)


def _warn_comparison(result: dict[str, Any]) -> None:
    noun = "sample" if result["task"] == "dng" else "target"
    unshared = result[f"num_unshared_{noun}s"]
    if unshared:
        err_console.print(
            f"[yellow]{unshared} {noun}(s) are in only one record and were left out[/]"
        )
    for key, (value_a, value_b) in result["settings_differ"].items():
        err_console.print(
            f"[yellow]the records differ in {key}: {value_a!r} (A), {value_b!r} (B)[/]"
        )
    if result["task"] == "dng" and result["same_weights"] is None:
        err_console.print(
            "[yellow]the weights that made the samples are not recorded in both (samples "
            "written before kldm stored weights_sha256)[/]"
        )
    if result.get("same_samples"):
        err_console.print("[yellow]A and B scored the same sample files[/]")
    elif result["same_weights"] and not result["settings_differ"]:
        err_console.print("[yellow]same weights and settings: A and B differ only by chance[/]")

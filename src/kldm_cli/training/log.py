"""The training log (``train_log.jsonl``): read, cut back on resume, and drawn as a PNG."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def truncate_log(path: Path, step: int, epoch: int) -> None:
    """Drop the records of ``path`` written after ``step`` / ``epoch`` (a resumed run redoes
    them), and torn lines from a crash."""
    if not path.exists():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            later = record["step"] > step or record.get("epoch", 0) > epoch
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

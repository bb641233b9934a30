"""Paired comparison of two evaluation records (``kldm evaluate compare``): CSP records over the
targets they share (:func:`compare_csp_records`), DNG records over the sample indices they share
(:func:`compare_dng_records`).

Two models (or samplers, or training steps) evaluated on the same test rows are compared target
by target: a target matched by one record and not by the other is a *discordant* pair. Under the
hypothesis that both have the same match rate, each discordant pair is equally likely to go
either way, so the number won by one side is Binomial(n_discordant, 1/2); the two-sided exact
McNemar p-value is the probability of a split at least as uneven. Pairing removes the
between-target variance: on MP-20, where most targets are matched by both or by neither, it is
far more sensitive than comparing two match rates with their separate standard errors.

DNG samples are paired by index (their file name, ``sample_00042``): samples drawn with the same
seed share their number of atoms and their noise, and two models of the same run tend to agree on
most of them. Whether or not they do, under the hypothesis that both models have the same rate
each discordant sample is equally likely to be either model's, so the same test applies to
validity, CHGNet stability and S.U.N. per sample. Set-level metrics (coverage, Wasserstein
distances) have no per-sample outcome and are reported side by side, untested.
"""

from __future__ import annotations

from math import comb
from typing import Any

from kldm_cli.evaluation.combine import (
    STABILITY_SETTINGS,
    check_csp,
    check_dng,
    index_by_material_id,
)

#: Settings reported when the two records differ in them (a difference is allowed: comparing
#: samplers or step counts is what the command is for, but it is said).
COMPARED_SETTINGS = ("k", "sampler", "steps", "grid", "matcher", "timeout_s", "validity")

#: DNG settings reported when they differ: how the samples were made (``samples_metadata``)
#: and how their stability was measured.
COMPARED_DNG_SAMPLING = ("seed", "sampler", "steps", "grid")
COMPARED_DNG_SETTINGS = (*STABILITY_SETTINGS, "coverage_cutoffs", "uniqueness_novelty_matcher")

#: Per-sample outcomes of a DNG record that are compared pairwise (a sample lacking one, e.g.
#: outside the measured stability chunks, is left out of that outcome's pairs).
DNG_OUTCOMES = ("valid", "stable", "sun")

#: Set-level DNG metrics shown side by side.
DNG_SET_METRICS = (
    "uniqueness", "novelty", "cov_recall", "cov_precision", "wdist_density", "wdist_num_elements",
)  # fmt: skip


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of ``only_a`` against ``only_b`` discordant pairs."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be non-negative, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def compare_records(
    a: dict[str, Any], b: dict[str, Any], *, names: tuple[str, str] = ("A", "B")
) -> dict[str, Any]:
    """:func:`compare_csp_records` or :func:`compare_dng_records`, by the records' task."""
    tasks = [record.get("task") for record in (a, b)]
    if tasks[0] != tasks[1]:
        raise ValueError(
            f"{names[0]} is a {tasks[0]!r} record and {names[1]} a {tasks[1]!r} record: "
            "only records of the same task can be compared"
        )
    if tasks[0] == "dng":
        return compare_dng_records(a, b, names=names)
    return compare_csp_records(a, b, names=names)


def paired_counts(hits_a: set[str], hits_b: set[str], n: int) -> dict[str, Any]:
    """Counts, rates, difference B − A and exact McNemar p of two sets of successes among the
    same ``n`` paired items."""
    only_a, only_b = len(hits_a - hits_b), len(hits_b - hits_a)
    return {
        "num": [len(hits_a), len(hits_b)],
        "rate": [len(hits_a) / n, len(hits_b) / n],
        "num_both": len(hits_a & hits_b),
        "num_only_a": only_a,
        "num_only_b": only_b,
        "difference": (len(hits_b) - len(hits_a)) / n,
        "p_value": mcnemar_exact_p(only_a, only_b),
    }


def compare_csp_records(
    a: dict[str, Any], b: dict[str, Any], *, names: tuple[str, str] = ("A", "B")
) -> dict[str, Any]:
    """The paired comparison of CSP records ``a`` and ``b`` over the targets in both.

    Targets are matched by ``material_id`` and must have the same formula in both. Raises
    ``ValueError`` naming the record when one is not a ``kldm evaluate csp`` record, lists a
    target twice, or when the two share no target.
    """
    check_csp(a, names[0])
    check_csp(b, names[1])
    by_id_a = index_by_material_id(a, names[0], "per_target")
    by_id_b = index_by_material_id(b, names[1], "per_target")
    common = [target for target in by_id_a if target in by_id_b]
    if not common:
        raise ValueError(f"{names[0]} and {names[1]} have no target in common")
    for target in common:
        if by_id_a[target]["formula"] != by_id_b[target]["formula"]:
            raise ValueError(
                f"target {target!r} is {by_id_a[target]['formula']} in {names[0]} but "
                f"{by_id_b[target]['formula']} in {names[1]}: not the same test rows"
            )
    hits_a = {t for t in common if by_id_a[t]["matched"]}
    hits_b = {t for t in common if by_id_b[t]["matched"]}
    n = len(common)
    counts = paired_counts(hits_a, hits_b, n)
    return {
        "task": "csp",
        "names": list(names),
        "num_targets": n,
        "num_unshared_targets": len(by_id_a) + len(by_id_b) - 2 * n,
        "num_matched": counts.pop("num"),
        "match_rate": counts.pop("rate"),
        **counts,
        "settings_differ": {
            key: [a["settings"].get(key), b["settings"].get(key)]
            for key in COMPARED_SETTINGS
            if a["settings"].get(key) != b["settings"].get(key)
        },
        "same_weights": _weights_sha256(a) == _weights_sha256(b),
    }


def _weights_sha256(record: dict[str, Any]) -> str | None:
    return record.get("inputs", {}).get("weights", {}).get("sha256")


def compare_dng_records(
    a: dict[str, Any], b: dict[str, Any], *, names: tuple[str, str] = ("A", "B")
) -> dict[str, Any]:
    """The paired comparison of DNG records ``a`` and ``b`` over the samples in both.

    Samples are paired by ``material_id`` (the file name, which carries the index). For each
    outcome of :data:`DNG_OUTCOMES` only the samples that have it in both records are paired:
    stability measured on part of the samples (``kldm evaluate combine``) is compared on the
    indices measured in both. Raises ``ValueError`` naming the record when one is not a
    ``kldm evaluate dng`` record, lists a sample twice, or when the two share no sample.
    """
    check_dng(a, names[0])
    check_dng(b, names[1])
    by_id_a = index_by_material_id(a, names[0])
    by_id_b = index_by_material_id(b, names[1])
    common = [sample for sample in by_id_a if sample in by_id_b]
    if not common:
        raise ValueError(f"{names[0]} and {names[1]} have no sample in common")
    outcomes = {}
    for outcome in DNG_OUTCOMES:
        pairs = {s: (_outcome(by_id_a[s], outcome), _outcome(by_id_b[s], outcome)) for s in common}
        pairs = {s: pair for s, pair in pairs.items() if None not in pair}
        if pairs:
            hits_a = {s for s, (in_a, _) in pairs.items() if in_a}
            hits_b = {s for s, (_, in_b) in pairs.items() if in_b}
            outcomes[outcome] = {
                "num_paired": len(pairs),
                **paired_counts(hits_a, hits_b, len(pairs)),
            }
    made_a = a["settings"].get("samples_metadata", {})
    made_b = b["settings"].get("samples_metadata", {})
    settings_differ = {
        key: [made_a.get(key), made_b.get(key)]
        for key in COMPARED_DNG_SAMPLING
        if made_a.get(key) != made_b.get(key)
    }
    settings_differ.update(
        {
            key: [a["settings"].get(key), b["settings"].get(key)]
            for key in COMPARED_DNG_SETTINGS
            if a["settings"].get(key) != b["settings"].get(key)
        }
    )
    weights = [made_a.get("weights_sha256"), made_b.get("weights_sha256")]
    samples = [record["inputs"].get("samples", {}).get("sha256") for record in (a, b)]
    return {
        "task": "dng",
        "names": list(names),
        "num_samples": len(common),
        "num_unshared_samples": len(by_id_a) + len(by_id_b) - 2 * len(common),
        "outcomes": outcomes,
        "set_metrics": {
            key: [a["metrics"].get(key), b["metrics"].get(key)] for key in DNG_SET_METRICS
        },
        "settings_differ": settings_differ,
        # None when a record does not say (samples written before kldm recorded the sha256)
        "same_weights": None if None in weights else weights[0] == weights[1],
        "same_samples": None if None in samples else samples[0] == samples[1],
    }


def _outcome(entry: dict[str, Any], outcome: str) -> bool | None:
    """One sample's outcome, None when the record does not have it."""
    if outcome == "valid":
        parts = [entry.get("structurally_valid"), entry.get("compositionally_valid")]
        return None if None in parts else all(parts)
    value = entry.get(outcome)
    return None if value is None else bool(value)

"""Paired comparison of two CSP records over the targets they share (``kldm evaluate compare``).

Two models (or samplers, or training steps) evaluated on the same test rows are compared target
by target: a target matched by one record and not by the other is a *discordant* pair. Under the
hypothesis that both have the same match rate, each discordant pair is equally likely to go
either way, so the number won by one side is Binomial(n_discordant, 1/2); the two-sided exact
McNemar p-value is the probability of a split at least as uneven. Pairing removes the
between-target variance: on MP-20, where most targets are matched by both or by neither, it is
far more sensitive than comparing two match rates with their separate standard errors.
"""

from __future__ import annotations

from math import comb
from typing import Any

from kldm_cli.combine import check_csp, index_by_material_id

#: Settings reported when the two records differ in them (a difference is allowed: comparing
#: samplers or step counts is what the command is for, but it is said).
COMPARED_SETTINGS = ("k", "sampler", "steps", "grid", "matcher", "timeout_s", "validity")


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of ``only_a`` against ``only_b`` discordant pairs."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be non-negative, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


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
    only_a, only_b = len(hits_a - hits_b), len(hits_b - hits_a)
    n = len(common)
    return {
        "names": list(names),
        "num_targets": n,
        "num_unshared_targets": len(by_id_a) + len(by_id_b) - 2 * n,
        "num_matched": [len(hits_a), len(hits_b)],
        "match_rate": [len(hits_a) / n, len(hits_b) / n],
        "num_both": len(hits_a & hits_b),
        "num_only_a": only_a,
        "num_only_b": only_b,
        "difference": (len(hits_b) - len(hits_a)) / n,
        "p_value": mcnemar_exact_p(only_a, only_b),
        "settings_differ": {
            key: [a["settings"].get(key), b["settings"].get(key)]
            for key in COMPARED_SETTINGS
            if a["settings"].get(key) != b["settings"].get(key)
        },
        "same_weights": _weights_sha256(a) == _weights_sha256(b),
    }


def _weights_sha256(record: dict[str, Any]) -> str | None:
    return record.get("inputs", {}).get("weights", {}).get("sha256")

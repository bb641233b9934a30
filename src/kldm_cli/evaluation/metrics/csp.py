"""Crystal structure prediction metrics: match rate (MR@k) and RMSE, as in CDVAE and DiffCSP.

For each target structure the model proposes ``k`` candidates with the target's composition.
A target is *matched* when at least one structurally valid candidate matches it under
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``. Its RMSE is the smallest RMS
displacement among the matching candidates, as returned by ``StructureMatcher.get_rms_dist``:
the RMS site displacement divided by the average free length per atom ``(V / N)^(1/3)``
(dimensionless). The reported RMSE averages this over matched targets only; the match rate
divides the number of matched targets by the number of all targets.

Only structural validity (:func:`~kldm_cli.evaluation.metrics.validity.structural_validity`) decides
whether a candidate may count: its composition is the target's, so compositional validity says
nothing about the model (the convention of the KLDM reference implementation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from kldm_cli.evaluation.metrics._parallel import run_tasks
from kldm_cli.evaluation.metrics.validity import structural_validity

#: The StructureMatcher tolerances of every CSP benchmark (CDVAE, DiffCSP, FlowMM, KLDM).
CSP_MATCHER_SETTINGS: dict[str, float] = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}

#: Signature of a pair comparison: (candidate, target, matcher settings) -> normalized RMS or None.
PairFunction = Callable[[Structure, Structure, dict[str, float]], float | None]


@dataclass
class TargetMatch:
    """The outcome for one target.

    ``rmse`` (dimensionless, normalized by (V/N)^(1/3)) and ``best_candidate`` (index into the
    target's candidate list) are None when no candidate matched.
    """

    index: int
    matched: bool
    rmse: float | None
    best_candidate: int | None
    num_candidates: int
    num_invalid: int
    num_timeouts: int
    num_errors: int


@dataclass
class CSPResult:
    """Match rate (fraction of targets matched, 0–1), RMSE averaged over matched targets (None if
    none matched), and counts. ``num_invalid`` counts structurally invalid candidates over all
    targets, ``num_timeouts`` pairs that ran past the time limit, ``num_errors`` pairs where the
    matcher raised; all three count as non-matches."""

    match_rate: float
    rmse: float | None
    num_targets: int
    num_matched: int
    num_candidates: int
    num_invalid: int
    num_timeouts: int
    num_errors: int
    per_target: list[TargetMatch] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Every number except the per-target list (JSON-ready)."""
        record = asdict(self)
        del record["per_target"]
        return record


def rms_distance(
    candidate: Structure, target: Structure, matcher_settings: dict[str, float]
) -> float | None:
    """``StructureMatcher(**matcher_settings).get_rms_dist(candidate, target)[0]``: the
    normalized RMS displacement, or None when the two do not match."""
    result = StructureMatcher(**matcher_settings).get_rms_dist(candidate, target)
    return None if result is None else float(result[0])


def match_structures(
    candidates: Sequence[Sequence[Structure | None]],
    targets: Sequence[Structure],
    *,
    workers: int = 2,
    timeout: float | None = 30.0,
    matcher_settings: dict[str, float] | None = None,
    pair_function: PairFunction = rms_distance,
) -> CSPResult:
    """Match each target against its candidates: ``candidates[i]`` are the ``k`` proposals for
    ``targets[i]`` (None stands for a candidate that could not be built).

    Every (valid candidate, target) pair is compared in one of ``workers`` processes, each pair
    under a wall-clock limit of ``timeout`` seconds (a pair past it counts as no match and is
    counted in ``num_timeouts``). ``workers=0`` compares in this process without a time limit.
    ``matcher_settings`` defaults to :data:`CSP_MATCHER_SETTINGS`; ``pair_function`` replaces
    the comparison (it must be a module-level function; used by tests).
    """
    if len(candidates) != len(targets):
        raise ValueError(f"got candidates for {len(candidates)} targets but {len(targets)} targets")
    settings = dict(CSP_MATCHER_SETTINGS if matcher_settings is None else matcher_settings)
    pairs: list[tuple[int, int]] = []
    invalid = [0] * len(targets)
    for i, proposals in enumerate(candidates):
        for j, candidate in enumerate(proposals):
            if candidate is not None and structural_validity(candidate):
                pairs.append((i, j))
            else:
                invalid[i] += 1
    outcomes = run_tasks(
        pair_function,
        [(candidates[i][j], targets[i], settings) for i, j in pairs],
        workers=workers,
        timeout=timeout,
    )

    best: list[tuple[float, int] | None] = [None] * len(targets)
    timeouts = [0] * len(targets)
    errors = [0] * len(targets)
    for (i, j), outcome in zip(pairs, outcomes, strict=True):
        if outcome.status == "timeout":
            timeouts[i] += 1
        elif outcome.status == "error":
            errors[i] += 1
        elif outcome.value is not None and (best[i] is None or outcome.value < best[i][0]):
            best[i] = (float(outcome.value), j)

    per_target = [
        TargetMatch(
            index=i,
            matched=best[i] is not None,
            rmse=None if best[i] is None else best[i][0],
            best_candidate=None if best[i] is None else best[i][1],
            num_candidates=len(candidates[i]),
            num_invalid=invalid[i],
            num_timeouts=timeouts[i],
            num_errors=errors[i],
        )
        for i in range(len(targets))
    ]
    return csp_result(per_target)


def csp_result(per_target: Sequence[TargetMatch]) -> CSPResult:
    """Match rate, RMSE and counts over the targets in ``per_target``.

    Every number is a sum or a mean over targets, so the result of targets matched in chunks
    (``kldm evaluate csp --start/--limit``) is the result of their union.
    """
    matched = [t.rmse for t in per_target if t.rmse is not None]
    return CSPResult(
        match_rate=len(matched) / len(per_target) if per_target else 0.0,
        rmse=sum(matched) / len(matched) if matched else None,
        num_targets=len(per_target),
        num_matched=len(matched),
        num_candidates=sum(t.num_candidates for t in per_target),
        num_invalid=sum(t.num_invalid for t in per_target),
        num_timeouts=sum(t.num_timeouts for t in per_target),
        num_errors=sum(t.num_errors for t in per_target),
        per_target=list(per_target),
    )

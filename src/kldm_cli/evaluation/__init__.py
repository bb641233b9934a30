"""Evaluation: ``kldm evaluate`` runs, their records, and the ranked search of ``kldm predict``.

Layers inside the package (a module imports only from the rows above it):

1. ``relax.py`` (CHGNet: load, single points, FIRE relaxation), ``records.py`` (the JSON record,
   data and weights hashes, versions, chunks), ``candidate_log.py`` (resumable logs);
2. ``metrics/`` (validity, CSP matching, DNG metrics, hull stability; ``stability.py`` uses
   ``relax.py``);
3. ``search.py`` (screen, relax and rank candidates), ``ranked.py`` (the search per test
   composition of ``evaluate csp --rank``);
4. ``csp_run.py`` (:func:`~kldm_cli.evaluation.csp_run.evaluate_csp`), ``dng_run.py``
   (:func:`~kldm_cli.evaluation.dng_run.evaluate_dng`);
5. ``combine.py`` (chunks → one record), ``compare.py`` (two records), ``breakdown.py`` (a CSP
   record by group).

Nothing is imported here, so that ``kldm --help`` and ``kldm predict`` without a search load
none of it.
"""

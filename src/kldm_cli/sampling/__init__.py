"""Sampling: a model ready to sample, the reverse-process loop, and the generation pipeline.

- :mod:`~kldm_cli.sampling.models` — :func:`load_model` (weights → :class:`~kldm_cli.model.KLDM`),
  the model's composition checks, routing a cell to a release by size;
- :mod:`~kldm_cli.sampling.loop` — prior, time grid, the EM / predictor–corrector loop
  (:func:`sample`: one batch of tensors);
- :mod:`~kldm_cli.sampling.pipeline` — plan → batches → sample → records → writer, shared by
  ``kldm predict``, ``kldm generate`` and ``kldm evaluate csp``.
"""

from kldm_cli.sampling.loop import (
    SAMPLER_STEPS,
    ReverseStepper,
    Samples,
    parse_time_grid,
    physical_cores,
    prior_state,
    run_reverse,
    sample,
    set_threads,
    time_grid,
)
from kldm_cli.sampling.models import LoadedModel, check_compositions, load_model
from kldm_cli.sampling.pipeline import (
    DEFAULT_BATCH_ATOMS,
    SampleWriter,
    SamplingPlan,
    batch_generator,
    plan_batches,
    sample_batches,
    sample_csp,
    sample_model,
    sampler_settings,
    samples_to_records,
)

__all__ = [
    "DEFAULT_BATCH_ATOMS", "SAMPLER_STEPS", "LoadedModel", "ReverseStepper", "SampleWriter",
    "Samples", "SamplingPlan", "batch_generator", "check_compositions", "load_model",
    "parse_time_grid", "physical_cores", "plan_batches", "prior_state", "run_reverse", "sample",
    "sample_batches", "sample_csp", "sample_model", "sampler_settings", "samples_to_records",
    "set_threads", "time_grid",
]  # fmt: skip

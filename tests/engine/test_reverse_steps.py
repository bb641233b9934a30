"""The one sampler loop: every process (positions, lattice, atom types) is stepped through the same
reverse-step interface, for both samplers, and the network is called in one place."""

from __future__ import annotations

import pytest
import torch
from tests.diffusion.test_atom_types import oracle_prediction as atom_type_oracle
from tests.diffusion.test_kinetic_langevin import EPS_0
from tests.diffusion.test_kinetic_langevin import crystals as kl_crystals
from tests.diffusion.test_kinetic_langevin import oracle_prediction as kl_oracle
from tests.diffusion.test_kinetic_langevin import process as kl_process
from tests.engine.test_sampling import tiny_model

from kldm_cli.config import LatticeDiffusionConfig, SamplerConfig, TypeDiffusionConfig
from kldm_cli.diffusion.atom_types import make_type_process
from kldm_cli.diffusion.reverse import ReverseStep, StepContext
from kldm_cli.diffusion.vp_sde import VPSDE
from kldm_cli.sampling import SAMPLER_STEPS, ReverseStepper, run_reverse, sample, time_grid

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_STEPS = 4


def _spy(monkeypatch, process, names, calls):
    """Record every call of the named methods of one process instance."""
    for name in names:
        original = getattr(process, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(process, name, spy)


@pytest.mark.parametrize("modality", ["c", "c-ab"])
def test_pc_sampler_uses_the_ddim_predictor_of_continuous_types(modality, monkeypatch):
    """``--sampler pc`` with one-hot or analog-bit types: corrector then the DDIM predictor
    (``step_predictor``) at every step, never the Euler–Maruyama step (``step``)."""
    model = tiny_model("dng", modality)
    calls: list[str] = []
    _spy(monkeypatch, model.types, ("step", "step_predictor", "step_corrector"), calls)
    sampler = SamplerConfig(method="pc", num_steps=NUM_STEPS)
    sample(model, torch.tensor([3, 2]), sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert calls == ["step_corrector", "step_predictor"] * NUM_STEPS


@pytest.mark.parametrize("modality", ["c", "c-ab"])
def test_em_sampler_uses_the_em_step_of_continuous_types(modality, monkeypatch):
    model = tiny_model("dng", modality)
    calls: list[str] = []
    _spy(monkeypatch, model.types, ("step", "step_predictor", "step_corrector"), calls)
    sampler = SamplerConfig(method="em", num_steps=NUM_STEPS)
    sample(model, torch.tensor([3, 2]), sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert calls == ["step"] * NUM_STEPS


# ---------------------------------------------------------------------------- sampler × process
PROCESSES = ["positions", "lattice", "types-c", "types-c-ab", "types-d"]
SAMPLERS = ["em", "pc"]

#: What each process's reverse_step runs per sampler step (the masking process has no corrector
#: and its predictor is its unmasking step).
EXPECTED_CALLS = {
    ("positions", "em"): ["step_em"],
    ("positions", "pc"): ["step_corrector", "step_predictor"],
    ("lattice", "em"): ["step_em"],
    ("lattice", "pc"): ["step_corrector", "step_predictor"],
    ("types-c", "em"): ["step"],
    ("types-c", "pc"): ["step_corrector", "step_predictor"],
    ("types-c-ab", "em"): ["step"],
    ("types-c-ab", "pc"): ["step_corrector", "step_predictor"],
    ("types-d", "em"): ["step"],
    ("types-d", "pc"): ["step_corrector", "step_predictor", "step"],
}


def _model_and_process(name: str):
    if name.startswith("types-"):
        model = tiny_model("dng", name.removeprefix("types-"))
        return model, model.types
    model = tiny_model("csp")
    return model, getattr(model, name)


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("name", PROCESSES)
def test_sample_runs_every_process_step_of_the_sampler(name, method, monkeypatch):
    """``sample`` steps each process with the sampler's process steps, and evaluates the network
    once per process step (through ``KLDM.predict``, the one place it is called)."""
    model, process = _model_and_process(name)
    calls: list[str] = []
    names = ("step", "step_em", "step_predictor", "step_corrector")
    _spy(monkeypatch, process, [n for n in names if hasattr(process, n)], calls)
    evaluations: list[str] = []
    _spy(monkeypatch, model, ["predict"], evaluations)
    num_atoms = torch.tensor([3, 2])
    numbers = None if model.types is not None else torch.tensor([3, 8, 8, 26, 29])
    sampler = SamplerConfig(method=method, num_steps=NUM_STEPS)  # type: ignore[arg-type]
    result = sample(model, num_atoms, numbers, sampler, torch.Generator().manual_seed(0))
    assert calls == EXPECTED_CALLS[name, method] * NUM_STEPS
    assert len(evaluations) == len(SAMPLER_STEPS[method]) * NUM_STEPS
    assert torch.isfinite(result.frac_coords).all() and torch.isfinite(result.lengths).all()


def _oracle_run(name: str, method: str, generator: torch.Generator):
    """The library loop on one process with a perfect network for a point mass; returns
    (final state, data) in comparable form."""
    num_crystals = 40
    if name == "positions":
        kl = kl_process(EPS_0, mean_free_velocity=False)
        batch_index, num_crystals = kl_crystals(*([2] * num_crystals))
        f0 = torch.rand(batch_index.numel(), 3, generator=generator, dtype=torch.float64)
        state = kl.prior(batch_index, num_crystals, generator=generator, dtype=torch.float64)

        def predict(t01, states):
            return {"positions": kl_oracle(kl, f0, t01, *states["positions"], batch_index,
                                           num_crystals)}  # fmt: skip

        process, dtype = kl, torch.float64
    elif name == "lattice":
        process = VPSDE(LatticeDiffusionConfig())
        batch_index = torch.arange(num_crystals)
        f0 = torch.randn(num_crystals, 6, generator=generator)
        state = process.prior((num_crystals, 6), generator)

        def predict(t01, states):
            return {"lattice": f0}

        dtype = torch.float32
    else:
        process = make_type_process(
            TypeDiffusionConfig(modality=name.removeprefix("types-")),  # type: ignore[arg-type]
            num_classes=7,
        )
        batch_index = torch.arange(6 * num_crystals) // 6
        f0 = torch.randint(0, 7, (batch_index.numel(),), generator=generator)
        state = process.prior(batch_index.numel(), generator)

        def predict(t01, states):
            return {name: atom_type_oracle(process, f0)}

        dtype = torch.float32
    context = StepContext(batch_index, num_crystals, tau=0.25)
    step = ReverseStepper({name: process}, predict, method, context, generator)
    grid = time_grid(100, 1e-3)
    final = run_reverse(step, {name: state}, grid, dtype=dtype)[name]
    if name == "positions":
        diff = final[0] - f0
        return diff - torch.round(diff), None
    if name == "lattice":
        return final - f0, None
    return process.decode(final), f0


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("name", PROCESSES)
def test_library_loop_with_a_perfect_network_reaches_the_data(name, method):
    """Every sampler × every process: the one loop (``run_reverse``) with the exact prediction
    for a point mass ends at that point."""
    result, truth = _oracle_run(name, method, torch.Generator().manual_seed(11))
    if truth is None:
        error = result.abs()  # the prior's spread is O(1) (lattice) or 0.5 (positions)
        assert float(error.max()) < 0.3
        assert float(error.median()) < 0.05
    else:
        assert float((result == truth).float().mean()) > 0.99


def test_reverse_step_rejects_an_unknown_kind():
    sde = VPSDE(LatticeDiffusionConfig())
    context = StepContext(torch.arange(2), 2)
    x = torch.zeros(2, 6)
    with pytest.raises(ValueError, match="Unknown process step 'leapfrog'"):
        step = ReverseStep("leapfrog", torch.ones(2), -0.1, context)  # type: ignore[arg-type]
        sde.reverse_step(step, x, x)
    with pytest.raises(ValueError, match="Unknown sampler"):
        ReverseStepper({"lattice": sde}, lambda t01, s: {"lattice": x}, "ode", context)

"""Kinetic Langevin process: kernel vs simulation, targets vs autograd, mean-free, sampling."""

import dataclasses
import math

import pytest
import torch

from kldm_cli.config import KineticLangevinConfig
from kldm_cli.diffusion.kinetic_langevin import KineticLangevin, _score_sq_ratio_grid, mean_free
from kldm_cli.diffusion.reverse import ReverseStep, StepContext
from kldm_cli.diffusion.wrapped_normal import wrapped_normal_score, wrapped_normal_score_sq_mean

from .reference import (
    TWO_PI,
    autograd_velocity_score,
    centre,
    kernel_coefficients,
    simulate_kinetic_langevin,
)

pytestmark = pytest.mark.usefixtures("one_thread")

EPS_0 = KineticLangevinConfig(simplified_parameterization=True)  # KLDM-ε₀ (the default)
EPS = KineticLangevinConfig(simplified_parameterization=False)  # KLDM-ε


def process(base: KineticLangevinConfig = EPS_0, **overrides) -> KineticLangevin:
    return KineticLangevin(dataclasses.replace(base, **overrides))


def reverse_step(kind, t01, dt01, batch_index, num_crystals, generator=None, tau=0.25):
    """The :class:`ReverseStep` the sampler would hand the process."""
    return ReverseStep(kind, t01, dt01, StepContext(batch_index, num_crystals, tau), generator)


def crystals(*num_atoms: int) -> tuple[torch.Tensor, int]:
    """batch_index [N] for crystals of the given sizes, and B."""
    counts = torch.tensor(num_atoms)
    return torch.repeat_interleave(torch.arange(len(num_atoms)), counts), len(num_atoms)


def per_crystal_sum(x, batch_index, num_crystals):
    return x.new_zeros(num_crystals, x.shape[1]).index_add_(0, batch_index, x)


# ---------------------------------------------------------------------- kernel
@pytest.fixture(scope="module")
def simulation():
    """Euler–Maruyama paths of the forward SDE from v₀ = 0 and v₀ = 0.8 (internal units)."""
    generator = torch.Generator().manual_seed(0)
    num_paths = 40_000
    starts = torch.tensor([0.0, 0.8], dtype=torch.float64).repeat_interleave(num_paths)
    paths = simulate_kinetic_langevin(starts, [0.3, 1.0, 2.0], 4e-3, generator)
    return {
        v0: {t: (r[i * num_paths : (i + 1) * num_paths], v[i * num_paths : (i + 1) * num_paths])
             for t, (r, v) in paths.items()}
        for i, v0 in enumerate((0.0, 0.8))
    }  # fmt: skip


@pytest.mark.parametrize("v0", [0.0, 0.8])
@pytest.mark.parametrize("t", [0.3, 1.0, 2.0])
def test_kernel_moments_match_simulation(simulation, v0, t):
    displacement, velocity = simulation[v0][t]
    num_paths = velocity.numel()
    mean_coeff, std_v, coeff_r, std_r = process(EPS).kernel(torch.tensor(t / 2.0))
    var_v = float(velocity.var())
    cov = float(((velocity - velocity.mean()) * (displacement - displacement.mean())).mean())
    slope = cov / var_v
    intercept = float(displacement.mean()) - slope * float(velocity.mean())
    residual = displacement - intercept - slope * velocity
    rel = 5 * math.sqrt(2.0 / num_paths) + 0.005  # statistical + discretization (dt = 4e-3)
    assert abs(float(velocity.mean()) - float(mean_coeff) * v0) < 5 * math.sqrt(var_v / num_paths)
    assert var_v == pytest.approx(float(std_v) ** 2, rel=rel)
    assert slope == pytest.approx(float(coeff_r), rel=rel)
    assert intercept == pytest.approx(float(coeff_r) * v0, abs=0.02)
    assert float(residual.var()) == pytest.approx(float(std_r) ** 2, rel=rel)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_sample_transition_matches_simulation_on_the_torus(simulation, t):
    v0 = 0.8
    sim_r, sim_v = simulation[v0][t]
    kl = process(EPS, mean_free_velocity=False, initial_velocity_std=1.0)
    generator = torch.Generator().manual_seed(1)
    num_atoms = 20_000
    batch_index, num_crystals = torch.arange(num_atoms), num_atoms
    f0 = torch.rand(num_atoms, 3, generator=generator, dtype=torch.float64)
    initial_velocity = torch.full_like(f0, v0 / TWO_PI)
    t01 = torch.full((num_crystals,), t / 2.0, dtype=torch.float64)
    f_t, v_t, _ = kl.sample_transition(
        t01, f0, initial_velocity, batch_index, num_crystals, generator=generator
    )
    assert f_t.dtype == torch.float64 and bool(((f_t >= 0) & (f_t < 1)).all())
    r = (TWO_PI * (f_t - f0)).reshape(-1)
    v = (TWO_PI * v_t).reshape(-1)

    def stats(r, v):
        return [torch.cos(r), torch.sin(r), v, v.square(), v * torch.sin(r), v * torch.cos(r)]

    for ours, theirs in zip(stats(r, v), stats(sim_r, sim_v), strict=True):
        standard_error = math.sqrt(
            float(ours.var()) / ours.numel() + float(theirs.var()) / theirs.numel()
        )
        assert abs(float(ours.mean()) - float(theirs.mean())) < 5 * standard_error + 2e-3


# ---------------------------------------------------------------------- targets
SCORE_CASES = {
    "eps0": (EPS_0, False),
    "eps0-mean-free": (EPS_0, True),
    "eps-at-rest": (EPS, False),
    "eps-moving": (dataclasses.replace(EPS, initial_velocity_std=0.7), False),
    "eps-moving-mean-free": (dataclasses.replace(EPS, initial_velocity_std=0.7), True),
}


@pytest.mark.parametrize("case", list(SCORE_CASES))
def test_velocity_score_of_true_target_matches_autograd(case):
    base, mean_free_velocity = SCORE_CASES[case]
    kl = process(base, mean_free_velocity=mean_free_velocity)
    generator = torch.Generator().manual_seed(2)
    batch_index, num_crystals = crystals(4, 1, 6, 3, 5, 2)
    t01 = torch.tensor([1e-3, 0.02, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    f0 = torch.rand(batch_index.numel(), 3, generator=generator, dtype=torch.float64)
    v0 = kl.sample_initial_velocity(f0, batch_index, num_crystals, generator=generator)
    assert bool((v0 != 0).any()) == (base.initial_velocity_std > 0)
    f_t, v_t, target = kl.sample_transition(
        t01, f0, v0, batch_index, num_crystals, generator=generator
    )
    got = kl.velocity_score(t01, v_t, target, batch_index)
    t = 2.0 * t01[batch_index][:, None]
    expected = autograd_velocity_score(f_t, TWO_PI * v_t, f0, TWO_PI * v0, t)
    if mean_free_velocity:
        expected = centre(expected, batch_index, num_crystals)
    scale = expected.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-6)


def test_simplified_target_has_unit_scale():
    kl = process(EPS_0, mean_free_velocity=False)
    generator = torch.Generator().manual_seed(3)
    num_atoms = 20_000
    batch_index = torch.arange(num_atoms)
    f0 = torch.rand(num_atoms, 3, generator=generator, dtype=torch.float64)
    for t01 in (0.01, 0.5, 1.0):
        times = torch.full((num_atoms,), t01, dtype=torch.float64)
        _, _, target = kl.sample_training(times, f0, batch_index, num_atoms, generator=generator)
        standard_error = math.sqrt(2.0 / target.numel())
        assert float(target.square().mean()) == pytest.approx(1.0, abs=4 * standard_error)


def test_score_norm_lookup_is_accurate_between_grid_points():
    kl = process(EPS_0)
    generator = torch.Generator().manual_seed(4)
    t01 = torch.cat(
        [torch.tensor([1e-3, 1.3e-3, 0.0123, 1.0]), torch.rand(40, generator=generator)]
    ).to(torch.float64)
    _, _, _, std_r = kernel_coefficients(2.0 * t01)
    expected = wrapped_normal_score_sq_mean(std_r)
    torch.testing.assert_close(kl.score_sq_mean(t01), expected, rtol=1e-5, atol=0)
    # the buffer is recomputed deterministically (no random draws)
    a = _score_sq_ratio_grid.__wrapped__(2.0, TWO_PI, 13, 64)
    b = _score_sq_ratio_grid.__wrapped__(2.0, TWO_PI, 13, 64)
    assert torch.equal(a, b)
    assert "score_sq_ratio" not in kl.state_dict()


# ---------------------------------------------------------------------- mean-free
def test_mean_free_matches_loop_reference():
    generator = torch.Generator().manual_seed(5)
    batch_index = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 1, 0])
    x = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(mean_free(x, batch_index, 3), centre(x, batch_index, 3))
    with pytest.raises(ValueError, match="batch_index"):
        mean_free(x, batch_index[:5], 3)


@pytest.mark.parametrize("base", [EPS_0, EPS], ids=["eps0", "eps"])
@pytest.mark.parametrize("mean_free_velocity", [True, False])
def test_noise_targets_and_steps_are_mean_free(base, mean_free_velocity):
    kl = process(base, mean_free_velocity=mean_free_velocity)
    generator = torch.Generator().manual_seed(6)
    batch_index, num_crystals = crystals(3, 7, 2, 5)
    f0 = torch.rand(batch_index.numel(), 3, generator=generator)
    t01 = torch.tensor([0.1, 0.4, 0.7, 1.0])

    def net_sum(x):
        return float(per_crystal_sum(x, batch_index, num_crystals).abs().max())

    f_t, v_t, target = kl.sample_training(t01, f0, batch_index, num_crystals, generator)
    _, v_prior = kl.prior(batch_index, num_crystals, generator=generator)
    outputs = [v_t, target, v_prior]
    prediction = torch.randn(f0.shape, generator=generator)  # not mean-free on purpose
    for kind, step in (
        ("em", kl.step_em), ("predictor", kl.step_predictor), ("corrector", kl.step_corrector)
    ):  # fmt: skip
        step_args = reverse_step(kind, t01, -0.01, batch_index, num_crystals, generator)
        f_next, v_next = step(step_args, (f_t, v_t), prediction)
        assert f_next.shape == v_next.shape == f0.shape
        assert bool(((f_next >= 0) & (f_next < 1)).all())
        outputs.append(v_next)
    for x in outputs:
        if mean_free_velocity:
            assert net_sum(x) < 1e-4
        else:
            assert net_sum(x) > 1e-2


# ---------------------------------------------------------------------- sampling
def oracle_prediction(kl, f0, t01, frac_coords, velocity, batch_index, num_crystals):
    """Network output that reproduces the exact velocity score of the point mass (f₀, v₀=0)."""
    _, std_v, coeff_r, std_r = kernel_coefficients(2.0 * t01[batch_index][:, None])
    diff = frac_coords - f0
    displacement = TWO_PI * (diff - torch.round(diff))
    mean_r = coeff_r * TWO_PI * velocity
    # ∇_v log p = c ∇_μ log WN - v / σ_v², with ∇_μ = -∂_x (checked against autograd elsewhere)
    wn_grad = -wrapped_normal_score(displacement, mean_r, std_r.expand_as(mean_r))
    score = coeff_r * wn_grad - TWO_PI * velocity / std_v**2
    if not kl.simplified_parameterization:
        return score
    # velocity_score is affine in the prediction: invert it
    zero = torch.zeros_like(velocity)
    offset = kl.velocity_score(t01, velocity, zero, batch_index, num_crystals)
    slope = kl.velocity_score(t01, velocity, zero + 1.0, batch_index, num_crystals) - offset
    return (score - offset) / slope


@pytest.mark.parametrize(
    "method, base", [("em", EPS_0), ("em", EPS), ("pc", EPS_0)], ids=["em-eps0", "em-eps", "pc"]
)
def test_reverse_sampling_with_oracle_recovers_point_mass(method, base):
    kl = process(base, mean_free_velocity=False)
    generator = torch.Generator().manual_seed(7)
    batch_index, num_crystals = crystals(*([2] * 60))
    f0 = torch.rand(batch_index.numel(), 3, generator=generator, dtype=torch.float64)
    frac_coords, velocity = kl.prior(
        batch_index, num_crystals, generator=generator, dtype=torch.float64
    )
    grid = torch.linspace(1.0, 1e-3, 101, dtype=torch.float64)
    for i in range(len(grid) - 1):
        t01 = grid[i].expand(num_crystals)
        dt01 = float(grid[i + 1] - grid[i])
        state = (frac_coords, velocity)
        if method == "pc":
            pred = oracle_prediction(kl, f0, t01, *state, batch_index, num_crystals)
            corrector = reverse_step("corrector", t01, dt01, batch_index, num_crystals, generator)
            state = kl.step_corrector(corrector, state, pred)
            kind, step = "predictor", kl.step_predictor
        else:
            kind, step = "em", kl.step_em
        pred = oracle_prediction(kl, f0, t01, *state, batch_index, num_crystals)
        step_args = reverse_step(kind, t01, dt01, batch_index, num_crystals, generator)
        frac_coords, velocity = step(step_args, state, pred)
    diff = frac_coords - f0
    distance = (diff - torch.round(diff)).abs().amax(dim=1)
    assert float(distance.max()) < 0.05
    assert float(distance.median()) < 0.02


@pytest.mark.parametrize("mean_free_velocity", [False, True])
def test_steps_keep_the_stationary_distribution(mean_free_velocity):
    """Data f₀ ~ U, v₀ ~ N(0, I) is stationary: p_t = U × N(0, I), ∇_v log p_t = -v.

    EM with this exact score keeps Var v = 1 up to O(h²) per step; the Langevin corrector with
    δ = τ / mean(s²) has the fixed point Var v = d + τ/2 (unadjusted-Langevin bias), with
    d = 1, or (K-1)/K per component for mean-free velocities.
    """
    kl = process(EPS, mean_free_velocity=mean_free_velocity)
    generator = torch.Generator().manual_seed(9)
    num_atoms = 20
    batch_index, num_crystals = crystals(*([num_atoms] * 200))
    dof = (num_atoms - 1) / num_atoms if mean_free_velocity else 1.0  # variance per component
    frac_coords, velocity = kl.prior(
        batch_index, num_crystals, generator=generator, dtype=torch.float64
    )
    t01 = torch.full((num_crystals,), 0.5, dtype=torch.float64)
    em = reverse_step("em", t01, -0.002, batch_index, num_crystals, generator)
    for _ in range(100):
        prediction = -TWO_PI * velocity
        frac_coords, velocity = kl.step_em(em, (frac_coords, velocity), prediction)
    assert float((TWO_PI * velocity).square().mean()) == pytest.approx(dof, rel=0.03)
    tau = 0.25
    corrector = reverse_step("corrector", t01, -0.002, batch_index, num_crystals, generator, tau)
    for _ in range(40):
        prediction = -TWO_PI * velocity
        frac_coords, velocity = kl.step_corrector(corrector, (frac_coords, velocity), prediction)
    # per-crystal δ estimates add a ~2 % Jensen bias on top of the sampling error (~1.3 %)
    assert float((TWO_PI * velocity).square().mean()) == pytest.approx(dof + tau / 2, rel=0.06)
    assert float(torch.cos(TWO_PI * frac_coords).mean()) == pytest.approx(0.0, abs=0.03)


def test_prior_is_uniform_and_stationary():
    kl = process(EPS_0, mean_free_velocity=False)
    generator = torch.Generator().manual_seed(8)
    batch_index = torch.arange(20_000)
    frac_coords, velocity = kl.prior(batch_index, 20_000, generator=generator)
    assert frac_coords.dtype == velocity.dtype == torch.float32
    assert bool(((frac_coords >= 0) & (frac_coords < 1)).all())
    assert float(frac_coords.mean()) == pytest.approx(0.5, abs=0.01)
    assert float((TWO_PI * velocity).var()) == pytest.approx(1.0, abs=0.03)


# ---------------------------------------------------------------------- reproducibility
def _run_everything(kl, seed):
    generator = torch.Generator().manual_seed(seed)
    batch_index, num_crystals = crystals(3, 4)
    f0 = torch.rand(7, 3, generator=generator)
    t01 = torch.tensor([0.3, 0.9])
    f_t, v_t, target = kl.sample_training(t01, f0, batch_index, num_crystals, generator)
    prior = kl.prior(batch_index, num_crystals, generator=generator)
    em = kl.step_em(
        reverse_step("em", t01, -0.01, batch_index, num_crystals, generator), (f_t, v_t), target
    )
    corrector = reverse_step("corrector", t01, -0.01, batch_index, num_crystals, generator)
    corr = kl.step_corrector(corrector, (f_t, v_t), target)
    return torch.cat([f_t, v_t, target, *prior, *em, *corr])


@pytest.mark.parametrize(
    "base", [EPS_0, dataclasses.replace(EPS, initial_velocity_std=0.5)], ids=["eps0", "eps"]
)
def test_same_seed_same_output(base):
    kl = process(base)
    assert torch.equal(_run_everything(kl, 11), _run_everything(kl, 11))
    assert not torch.equal(_run_everything(kl, 11), _run_everything(kl, 12))


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(initial_velocity_std=0.5), "simplified"),
        (dict(simplified_parameterization=False, initial_velocity_std=-1.0), "initial_velocity"),
        (dict(t_final=0.0), "t_final"),
        (dict(position_scale=-1.0), "position_scale"),
        (dict(num_wrapped_images=-1), "num_wrapped_images"),
        (dict(num_norm_grid=1), "num_norm_grid"),
    ],
)
def test_invalid_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        process(EPS_0, **overrides)


def test_invalid_calls_raise():
    kl = process(EPS_0)
    batch_index, num_crystals = crystals(2)
    f0 = torch.rand(2, 3)
    with pytest.raises(ValueError, match="v0 = 0"):
        kl.sample_transition(torch.tensor([0.5]), f0, torch.ones(2, 3), batch_index, 1)
    with pytest.raises(ValueError, match="shape"):
        kl.sample_transition(torch.tensor([0.5]), f0, torch.zeros(3, 3), batch_index, 1)
    with pytest.raises(ValueError, match="shape"):
        kl.loss(torch.zeros(2, 3), torch.zeros(3, 3))
    assert float(kl.loss(torch.ones(2, 3), torch.zeros(2, 3))) == pytest.approx(1.0)

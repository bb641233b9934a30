"""VP-SDE: marginal vs simulation, oracle reverse sampling, corrector, shapes and seeds."""

import math

import pytest
import torch

from kldm_cli.config import LatticeDiffusionConfig
from kldm_cli.diffusion.reverse import ReverseStep, StepContext
from kldm_cli.diffusion.vp_sde import VPSDE

from .reference import gaussian_mixture_posterior_mean

pytestmark = pytest.mark.usefixtures("one_thread")


def test_alpha_sigma_match_simulation_of_forward_sde():
    sde = VPSDE(LatticeDiffusionConfig())
    generator = torch.Generator().manual_seed(0)
    num_paths, dt = 40_000, 1e-3
    x0 = 5.0 * torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(num_paths // 2)
    x = x0.clone()
    checks = {100: 0.1, 500: 0.5, 1000: 1.0}
    for step in range(1000):
        beta = sde.beta_min + (sde.beta_max - sde.beta_min) * (step + 0.5) * dt
        noise = torch.randn(num_paths, generator=generator, dtype=torch.float64)
        x = x - 0.5 * beta * x * dt + math.sqrt(beta * dt) * noise
        if step + 1 in checks:
            alpha, sigma = sde.alpha_sigma(torch.tensor(checks[step + 1], dtype=torch.float64))
            slope = float(((x - x.mean()) * (x0 - x0.mean())).mean() / x0.var())
            residual = x - slope * x0
            assert slope == pytest.approx(float(alpha), abs=5e-3)  # 5 standard errors
            assert float(residual.var()) == pytest.approx(float(sigma) ** 2, rel=0.04)
            assert abs(float(residual.mean())) < 5 * float(sigma) / math.sqrt(num_paths)


def test_sample_training_per_row_times_any_feature_dim():
    sde = VPSDE(LatticeDiffusionConfig())
    generator = torch.Generator().manual_seed(1)
    num_rows, dim = 4000, 5
    t01 = torch.rand(num_rows, generator=generator)
    x0 = torch.randn(num_rows, dim, generator=generator)
    x_t, target = sde.sample_training(t01, x0, generator=generator)
    assert x_t.shape == (num_rows, dim) and x_t.dtype == torch.float32
    assert torch.equal(target, x0)
    alpha, sigma = sde.alpha_sigma(t01)
    eps = (x_t - alpha[:, None] * x0) / sigma[:, None]
    assert float(eps.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(eps.var()) == pytest.approx(1.0, abs=0.03)
    # the same call with [R, 1] times and a scalar time
    x_t2, _ = sde.sample_training(t01[:, None], x0, generator=torch.Generator().manual_seed(2))
    x_t3, _ = sde.sample_training(
        t01, x0, generator=torch.Generator().manual_seed(2)
    )  # fmt: skip
    assert torch.equal(x_t2, x_t3)
    x_s, _ = sde.sample_training(torch.tensor(0.0), x0, generator=generator)
    torch.testing.assert_close(x_s, x0)
    with pytest.raises(ValueError, match="one time per row"):
        sde.sample_training(t01[:10], x0)


def test_schedule_endpoints():
    sde = VPSDE(LatticeDiffusionConfig(beta_min=0.1, beta_max=20.0))
    alpha, sigma = sde.alpha_sigma(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(alpha[0]) == 1.0 and float(sigma[0]) == 0.0
    assert float(alpha[1]) == pytest.approx(math.exp(-0.5 * (0.1 + 0.5 * 19.9)))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(2, dtype=torch.float64))


MIXTURE = dict(means=[-1.0, 1.5], stds=[0.1, 0.2], weights=[0.3, 0.7])


def _step(kind, t01, dt01, generator=None, tau=0.25):
    """A :class:`ReverseStep` for rows with one time each (``t01 [R]``)."""
    context = StepContext(torch.arange(t01.shape[0]), t01.shape[0], tau=tau)
    return ReverseStep(kind, t01, dt01, context, generator)


def _oracle(sde, t01, x_t):
    alpha, sigma = sde.alpha_sigma(torch.as_tensor(t01, dtype=torch.float64))
    return gaussian_mixture_posterior_mean(x_t, alpha, sigma, **MIXTURE)


@pytest.mark.parametrize("method", ["em", "pc"])
def test_reverse_sampling_with_oracle_reaches_data(method):
    sde = VPSDE(LatticeDiffusionConfig())
    generator = torch.Generator().manual_seed(3)
    num_samples = 4000
    x = sde.prior((num_samples, 1), generator=generator, dtype=torch.float64)
    grid = torch.linspace(1.0, 1e-3, 201, dtype=torch.float64)
    for i in range(len(grid) - 1):
        t01 = grid[i].expand(num_samples)
        dt01 = float(grid[i + 1] - grid[i])
        if method == "pc":
            step = _step("corrector", t01, dt01, generator)
            x = sde.step_corrector(step, x, _oracle(sde, grid[i], x))
            x = sde.step_predictor(_step("predictor", t01, dt01), x, _oracle(sde, grid[i], x))
        else:
            x = sde.step_em(_step("em", t01, dt01, generator), x, _oracle(sde, grid[i], x))
    x = x.reshape(-1)
    left, right = x[x < 0.25], x[x >= 0.25]
    assert left.numel() / num_samples == pytest.approx(0.3, abs=0.03)
    assert float(left.mean()) == pytest.approx(-1.0, abs=0.02)
    assert float(right.mean()) == pytest.approx(1.5, abs=0.02)
    assert float(left.std()) == pytest.approx(0.1, rel=0.12)
    assert float(right.std()) == pytest.approx(0.2, rel=0.12)


def test_corrector_has_the_unadjusted_langevin_fixed_point():
    """Langevin steps with the exact score of a Gaussian p_t = N(m, v) and δ = τ / E[s²]:
    the variance recursion v' = (1 - δ/v)² v' + 2δ, δ = τ v²/v', has the fixed point
    v' = (1 + τ/2) v (and → v as τ → 0); the mean stays at m."""
    sde = VPSDE(LatticeDiffusionConfig())
    generator = torch.Generator().manual_seed(4)
    t01, mean0, std0 = 0.3, 0.5, 0.3
    alpha, sigma = (float(v) for v in sde.alpha_sigma(torch.tensor(t01, dtype=torch.float64)))
    var_t = alpha**2 * std0**2 + sigma**2
    num_rows = 20_000
    x = alpha * mean0 + math.sqrt(var_t) * torch.randn(num_rows, 2, generator=generator).double()
    times = torch.full((num_rows,), t01, dtype=torch.float64)

    def pred_x0(x):
        return mean0 + alpha * std0**2 / var_t * (x - alpha * mean0)

    for tau in (0.25, 0.02):
        step = _step("corrector", times, -0.01, generator, tau=tau)
        for _ in range(40):
            x = sde.step_corrector(step, x, pred_x0(x))
        assert float(x.mean()) == pytest.approx(alpha * mean0, abs=0.02)
        assert float(x.var()) == pytest.approx(var_t * (1 + tau / 2), rel=0.025)


def test_corrector_step_size_per_row_or_per_tensor():
    sde = VPSDE(LatticeDiffusionConfig())
    x = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, 0.3]], dtype=torch.float64)
    pred = torch.zeros_like(x)
    t01 = torch.tensor([0.4, 0.4], dtype=torch.float64)
    score = sde.score(t01, x, pred)
    for per_row in (False, True):
        step = _step("corrector", t01, -0.01, torch.Generator().manual_seed(0), tau=0.1)
        got = sde.step_corrector(step, x, pred, per_row=per_row)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        mean_sq = score.square().mean(dim=1, keepdim=True) if per_row else score.square().mean()
        delta = 0.1 / mean_sq
        torch.testing.assert_close(got, x + delta * score + torch.sqrt(2 * delta) * noise)


def test_same_seed_same_output_and_invalid_config():
    sde = VPSDE(LatticeDiffusionConfig())

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        x = sde.prior((6, 6), generator=generator)
        t01 = torch.full((6,), 0.7)
        a = sde.step_em(_step("em", t01, -0.01, generator), x, torch.zeros_like(x))
        b = sde.step_corrector(_step("corrector", t01, -0.01, generator), x, torch.zeros_like(x))
        c = sde.step_predictor(_step("predictor", t01, -0.01, generator), x, torch.zeros_like(x))
        return torch.cat([x, a, b, c])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    with pytest.raises(ValueError, match="beta"):
        VPSDE(LatticeDiffusionConfig(beta_min=5.0, beta_max=1.0))
    with pytest.raises(ValueError, match="shape"):
        sde.loss(torch.zeros(2, 6), torch.zeros(3, 6))

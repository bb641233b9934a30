"""Atom-type diffusion: analog-bit codes, masking marginals, oracle reverse sampling, losses,
seeding and a tiny learning test per modality."""

from __future__ import annotations

import math

import pytest
import torch

from kldm_cli.config import TypeDiffusionConfig
from kldm_cli.diffusion.atom_types import (
    IGNORE_INDEX,
    AnalogBitsDiffusion,
    AtomTypeProcess,
    MaskingDiffusion,
    OneHotDiffusion,
    make_type_process,
)
from kldm_cli.diffusion.reverse import ReverseStep, StepContext
from kldm_cli.sampling import ReverseStepper, run_reverse

T_MIN = 1e-3
ATOMS_PER_CRYSTAL = 12


pytestmark = pytest.mark.usefixtures("one_thread")


def make_process(name: str, num_classes: int) -> AtomTypeProcess:
    if name == "one-hot":
        return OneHotDiffusion(num_classes)
    if name == "analog-bits":
        return AnalogBitsDiffusion(num_classes)
    if name == "analog-bits-scaled":
        return AnalogBitsDiffusion(num_classes, scale=0.5)
    if name == "masking-linear":
        return MaskingDiffusion(num_classes, schedule="linear")
    if name == "masking-cosine":
        return MaskingDiffusion(num_classes, schedule="cosine")
    raise AssertionError(name)


ALL = ["one-hot", "analog-bits", "analog-bits-scaled", "masking-linear", "masking-cosine"]
CONTINUOUS = ["one-hot", "analog-bits", "analog-bits-scaled"]
MASKING = ["masking-linear", "masking-cosine"]


def expected_alpha(schedule: str, t01: float) -> float:
    """Keep probability of the masking schedules, written out independently of the module."""
    return 1.0 - t01 if schedule == "linear" else math.cos(0.5 * math.pi * t01)


def oracle_prediction(process: AtomTypeProcess, type_index: torch.Tensor) -> torch.Tensor:
    """What a perfect network outputs: the true x₀ (continuous) or certain logits (masking)."""
    if isinstance(process, MaskingDiffusion):
        one_hot = torch.nn.functional.one_hot(type_index, process.num_classes).bool()
        return torch.where(one_hot, 0.0, -math.inf)
    return process.encode(type_index)


def run_sampler(process, num_atoms, predict, *, num_steps, generator, method="em", t_end=T_MIN):
    """The library's sampler loop (:func:`kldm_cli.sampling.run_reverse`) on this one process,
    on a t01 grid from 1 to t_end; ``predict(state, t01)`` gets one time per atom.

    Atoms are grouped into crystals of ATOMS_PER_CRYSTAL (the last one may be smaller).
    """
    grid = torch.linspace(1.0, t_end, num_steps + 1)
    batch_index = torch.arange(num_atoms) // ATOMS_PER_CRYSTAL
    context = StepContext(batch_index, int(batch_index[-1]) + 1, tau=0.25)
    step = ReverseStepper(
        {"types": process},
        lambda t01, states: {"types": predict(states["types"], t01[batch_index])},
        method,
        context,
        generator,
    )
    return run_reverse(step, {"types": process.prior(num_atoms, generator)}, grid)["types"]


# ---------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    ("modality", "cls", "state_dim", "output_dim"),
    [
        ("c", OneHotDiffusion, 11, 11),
        ("c-ab", AnalogBitsDiffusion, 4, 4),
        ("d", MaskingDiffusion, 12, 11),
    ],
)
def test_make_type_process_dims(modality, cls, state_dim, output_dim):
    process = make_type_process(TypeDiffusionConfig(modality=modality), num_classes=11)
    assert type(process) is cls
    assert (process.num_classes, process.state_dim, process.output_dim) == (
        11,
        state_dim,
        output_dim,
    )
    type_index = torch.arange(11)
    state_t, _ = process.sample_training(torch.full((11,), 0.5), type_index)
    features = process.network_input(state_t)
    assert features.shape == (11, state_dim) and features.dtype == torch.float32
    # Derived tables never enter the state dict (weights are loaded strictly).
    assert process.state_dict() == {}


def test_make_type_process_rejects_bad_input():
    with pytest.raises(ValueError, match="modality"):
        make_type_process(TypeDiffusionConfig(modality="x"), num_classes=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        OneHotDiffusion(1)
    with pytest.raises(ValueError, match="schedule"):
        MaskingDiffusion(5, schedule="square")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        MaskingDiffusion(5).sample_training(torch.ones(2), torch.tensor([0, 5]))


# ---------------------------------------------------------------------------- analog bits
@pytest.mark.parametrize("num_classes", [2, 3, 5, 7, 10, 89, 100])
@pytest.mark.parametrize("scale", [1.0, 0.5, 2.0])
def test_analog_bits_round_trip(num_classes, scale):
    process = AnalogBitsDiffusion(num_classes, scale=scale)
    assert process.num_bits == math.ceil(math.log2(num_classes))
    every_class = torch.arange(num_classes)
    codes = process.encode(every_class)
    assert set(codes.unique().tolist()) <= {-scale, scale}
    assert torch.equal(process.decode(codes), every_class)
    # The written bits are the binary digits, most significant first.
    bits = [[int(b) for b in format(k, f"0{process.num_bits}b")] for k in range(num_classes)]
    assert torch.equal((codes > 0).long(), torch.tensor(bits))


@pytest.mark.parametrize("num_classes", [3, 5, 7, 89])
def test_analog_bits_invalid_patterns_go_to_nearest_valid_code(num_classes):
    process = AnalogBitsDiffusion(num_classes)
    generator = torch.Generator().manual_seed(0)
    state = 1.5 * torch.randn(20_000, process.num_bits, generator=generator)
    pattern = process.bits_to_int(state > 0)
    assert bool((pattern >= num_classes).any()), "the test needs invalid patterns"
    decoded = process.decode(state)
    assert decoded.dtype == torch.long
    assert int(decoded.min()) >= 0 and int(decoded.max()) < num_classes
    valid = pattern < num_classes
    assert torch.equal(decoded[valid], pattern[valid])
    # Independent check: the decoded code is (one of) the nearest valid codes.
    distances = torch.cdist(state, process.codes)
    chosen = distances.gather(1, decoded[:, None]).squeeze(1)
    assert torch.allclose(chosen, distances.min(dim=1).values)


@pytest.mark.parametrize("name", ALL)
def test_decode_of_arbitrary_states_is_in_range(name):
    process = make_process(name, 7)
    generator = torch.Generator().manual_seed(1)
    if isinstance(process, MaskingDiffusion):
        state = torch.randint(0, 7, (5000,), generator=generator)
    else:
        state = 3.0 * torch.randn(5000, process.state_dim, generator=generator)
    decoded = process.decode(state)
    assert decoded.dtype == torch.long and decoded.shape == (5000,)
    assert int(decoded.min()) >= 0 and int(decoded.max()) < 7


def test_masking_decode_refuses_mask_tokens():
    process = MaskingDiffusion(4)
    with pytest.raises(ValueError, match="still masked"):
        process.decode(torch.tensor([0, 4, 2]))


# ---------------------------------------------------------------------------- masking process
@pytest.mark.parametrize("name", MASKING)
@pytest.mark.parametrize("t01", [0.05, 0.3, 0.5, 0.8, 1.0])
def test_masking_forward_marginal(name, t01):
    process = make_process(name, 6)
    num_atoms = 40_000
    generator = torch.Generator().manual_seed(2)
    type_index = torch.randint(0, 6, (num_atoms,), generator=generator)
    state_t, target = process.sample_training(torch.full((num_atoms,), t01), type_index, generator)
    masked = state_t == process.mask_index
    expected = 1.0 - expected_alpha(process.schedule, t01)
    tolerance = 5.0 * math.sqrt(expected * (1 - expected) / num_atoms) + 1e-6
    assert abs(masked.float().mean().item() - expected) <= tolerance
    assert torch.equal(state_t[~masked], type_index[~masked])
    assert torch.equal(target[masked], type_index[masked])
    assert bool((target[~masked] == IGNORE_INDEX).all())


@pytest.mark.parametrize("name", MASKING)
@pytest.mark.parametrize("method", ["em", "pc"])
def test_masking_oracle_reverse_recovers_data(name, method):
    process = make_process(name, 7)
    generator = torch.Generator().manual_seed(3)
    truth = torch.randint(0, 7, (600,), generator=generator)
    state = run_sampler(
        process,
        600,
        lambda state, t01: oracle_prediction(process, truth),
        num_steps=40,
        generator=generator,
        method=method,
    )
    assert not bool((state == process.mask_index).any())
    assert torch.equal(process.decode(state), truth)


@pytest.mark.parametrize("name", MASKING)
@pytest.mark.parametrize("num_steps", [1, 7, 100])
def test_masking_random_predictions_never_leave_a_mask(name, num_steps):
    process = make_process(name, 5)
    generator = torch.Generator().manual_seed(4)
    state = run_sampler(
        process,
        2000,
        lambda state, t01: 3.0 * torch.randn(state.shape[0], 5, generator=generator),
        num_steps=num_steps,
        generator=generator,
    )
    assert not bool((state == process.mask_index).any())
    decoded = process.decode(state)
    assert int(decoded.min()) >= 0 and int(decoded.max()) < 5


@pytest.mark.parametrize("name", MASKING)
def test_masking_reverse_marginal_follows_schedule(name):
    """Reversing the absorbing process, the masked fraction at time t is 1 - α(t) again."""
    process = make_process(name, 5)
    generator = torch.Generator().manual_seed(5)
    num_atoms = 20_000
    t_stop = 0.4
    state = run_sampler(
        process,
        num_atoms,
        lambda state, t01: torch.zeros(state.shape[0], 5),
        num_steps=30,
        generator=generator,
        t_end=t_stop,
    )
    expected = 1.0 - expected_alpha(process.schedule, t_stop)
    tolerance = 5.0 * math.sqrt(expected * (1 - expected) / num_atoms)
    assert abs((state == process.mask_index).float().mean().item() - expected) <= tolerance


def test_masking_loss_weight_is_the_elbo_weight():
    """Uniform logits: loss = mean over atoms of 1{masked} · log K · (-α'/(1-α))."""
    for schedule in ("linear", "cosine"):
        process = MaskingDiffusion(4, schedule=schedule)
        t01 = torch.tensor([0.1, 0.5, 0.9, 0.25])
        target = torch.tensor([2, IGNORE_INDEX, 0, 3])
        loss = process.loss(torch.zeros(4, 4), target, t01)
        if schedule == "linear":
            weight = 1.0 / t01
        else:
            half_pi = 0.5 * math.pi
            weight = half_pi * torch.sin(half_pi * t01) / (1.0 - torch.cos(half_pi * t01))
        expected = (weight * math.log(4.0) * (target != IGNORE_INDEX)).sum() / 4
        torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------- continuous
@pytest.mark.parametrize("name", CONTINUOUS)
@pytest.mark.parametrize("method", ["em", "pc"])
def test_continuous_oracle_reverse_recovers_data(name, method):
    process = make_process(name, 7)
    generator = torch.Generator().manual_seed(6)
    truth = torch.randint(0, 7, (400,), generator=generator)
    state = run_sampler(
        process,
        400,
        lambda state, t01: oracle_prediction(process, truth),
        num_steps=100,
        generator=generator,
        method=method,
    )
    assert torch.equal(process.decode(state), truth)


def test_analog_bits_reverse_step_clamps_the_estimate():
    """An over-confident bit estimate acts as ±scale in the reverse step."""
    process = AnalogBitsDiffusion(6, scale=0.5)
    state = torch.randn(8, process.num_bits, generator=torch.Generator().manual_seed(12))
    t01 = torch.full((8,), 0.3)
    prediction = 4.0 * torch.randn(8, process.num_bits, generator=torch.Generator().manual_seed(13))
    clamped = prediction.clamp(-0.5, 0.5)
    context = StepContext(batch_index=torch.arange(8), num_crystals=8)
    for kind in ("em", "predictor", "corrector"):
        first, second = (
            ReverseStep(kind, t01, -0.01, context, torch.Generator().manual_seed(14)) for _ in "12"
        )
        raw = process.reverse_step(first, state, prediction)
        torch.testing.assert_close(raw, process.reverse_step(second, state, clamped))


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_training_sample_has_vp_marginal(name):
    """x_t = α x₀ + σ ε: mean and variance per time against the VP-SDE's α, σ."""
    process = make_process(name, 5)
    generator = torch.Generator().manual_seed(7)
    num_atoms = 20_000
    type_index = torch.full((num_atoms,), 3)
    for t01 in (0.1, 0.5):
        x_t, target = process.sample_training(torch.full((num_atoms,), t01), type_index, generator)
        assert torch.equal(target, process.encode(type_index))
        integral = 0.1 * t01 + 0.5 * (20.0 - 0.1) * t01**2
        alpha, sigma = math.exp(-0.5 * integral), math.sqrt(1.0 - math.exp(-integral))
        torch.testing.assert_close(x_t.mean(0), alpha * target[0], atol=0.03, rtol=0)
        torch.testing.assert_close(x_t.std(0), torch.full_like(x_t[0], sigma), atol=0.03, rtol=0)


# ---------------------------------------------------------------------------- losses, seeding
@pytest.mark.parametrize("name", ALL)
def test_loss_is_minimal_for_a_perfect_prediction(name):
    process = make_process(name, 6)
    generator = torch.Generator().manual_seed(8)
    num_atoms = 500
    type_index = torch.randint(0, 6, (num_atoms,), generator=generator)
    t01 = torch.rand(num_atoms, generator=generator).clamp_min(T_MIN)
    _, target = process.sample_training(t01, type_index, generator)
    wrong_index = (type_index + 1) % 6
    if isinstance(process, MaskingDiffusion):
        perfect = 50.0 * torch.nn.functional.one_hot(type_index, 6).float()
        wrong = 50.0 * torch.nn.functional.one_hot(wrong_index, 6).float()
    else:
        perfect, wrong = process.encode(type_index), process.encode(wrong_index)
    perfect_loss = process.loss(perfect, target, t01)
    wrong_loss = process.loss(wrong, target, t01)
    assert perfect_loss.dim() == 0
    assert perfect_loss.item() < 1e-6
    assert wrong_loss.item() > 0.1


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name):
    process = make_process(name, 6)
    type_index = torch.arange(6).repeat(50)
    t01 = torch.linspace(T_MIN, 1.0, 300)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        state_t, target = process.sample_training(t01, type_index, generator)
        logits = torch.randn(300, process.output_dim, generator=generator)
        sample = run_sampler(
            process, 300, lambda state, t: logits, num_steps=10, generator=generator, method="pc"
        )
        return state_t, target, sample

    first, again, other = run(9), run(9), run(10)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[2], other[2])


# ---------------------------------------------------------------------------- learning
def bayes_prediction(process: AtomTypeProcess, class_logits, state, t01):
    """The best prediction given only a class prior ``softmax(class_logits)`` (no network).

    Masking: the prior logits themselves. Continuous: the posterior mean of x₀ under the
    prior, ``Σ_k softmax_k(θ_k + log N(x_t; α c_k, σ² I)) c_k``.
    """
    if isinstance(process, MaskingDiffusion):
        return class_logits.expand(state.shape[0], -1)
    alpha, sigma = process.sde.alpha_sigma(t01)
    alpha, variance = alpha[:, None], sigma.square()[:, None]
    codes = process.codes
    log_likelihood = (alpha * state @ codes.T - 0.5 * alpha**2 * codes.square().sum(1)) / variance
    return torch.softmax(class_logits + log_likelihood, dim=-1) @ codes


@pytest.mark.parametrize(
    ("name", "method"), [(name, "em") for name in ALL] + [(name, "pc") for name in CONTINUOUS]
)
def test_exact_class_prior_reproduces_frequencies(name, method):
    """Sampling with the Bayes-optimal prediction for a known categorical gives its frequencies.

    (Masking has no corrector, so its PC loop is its EM loop.) The Langevin corrector adds a
    small bias of its own (≈ 0.02 at 100 steps), hence the wider PC tolerance; a step size taken
    per atom instead of per crystal is off by ≈ 0.12 for analog bits.
    """
    probabilities = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])
    process = make_process(name, probabilities.numel())
    num_atoms = 4000
    state = run_sampler(
        process,
        num_atoms,
        lambda state, t01: bayes_prediction(process, probabilities.log(), state, t01),
        num_steps=100,
        generator=torch.Generator().manual_seed(15),
        method=method,
    )
    frequencies = torch.bincount(process.decode(state), minlength=probabilities.numel())
    tolerance = 0.03 if method == "em" else 0.045
    torch.testing.assert_close(frequencies / num_atoms, probabilities, atol=tolerance, rtol=0)


def test_corrector_step_size_is_pooled_per_crystal():
    """δ = tau / mean(s²) over each crystal's atoms and features, checked crystal by crystal."""
    process = AnalogBitsDiffusion(6)
    generator = torch.Generator().manual_seed(16)
    state = torch.randn(7, process.num_bits, generator=generator)
    prediction = process.encode(torch.randint(0, 6, (7,), generator=generator))
    t01 = torch.rand(7, generator=generator)
    batch_index = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    pooled = process.corrector(
        t01, state, prediction, 0.3, torch.Generator().manual_seed(17), batch_index=batch_index
    )
    noise = torch.randn(7, process.num_bits, generator=torch.Generator().manual_seed(17))
    score = process.sde.score(t01, state, prediction)
    for crystal in range(3):
        rows = batch_index == crystal
        delta = 0.3 / score[rows].square().mean()
        expected = state[rows] + delta * score[rows] + torch.sqrt(2 * delta) * noise[rows]
        torch.testing.assert_close(pooled[rows], expected)


@pytest.mark.parametrize("name", ["one-hot", "analog-bits", "masking-linear"])
def test_learned_class_prior_reproduces_frequencies(name):
    probabilities = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])
    num_classes = probabilities.numel()
    process = make_process(name, num_classes)
    generator = torch.Generator().manual_seed(11)
    class_logits = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.Adam([class_logits], lr=0.05)
    batch = 512
    for step in range(300):
        if step == 200:  # smaller steps at the end, so the learned prior settles
            optimizer.param_groups[0]["lr"] = 0.01
        type_index = torch.multinomial(probabilities, batch, replacement=True, generator=generator)
        t01 = T_MIN + (1.0 - T_MIN) * torch.rand(batch, generator=generator)
        state_t, target = process.sample_training(t01, type_index, generator)
        prediction = bayes_prediction(process, class_logits, state_t, t01)
        loss = process.loss(prediction, target, t01)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    num_atoms = 4000
    with torch.no_grad():
        state = run_sampler(
            process,
            num_atoms,
            lambda state, t01: bayes_prediction(process, class_logits, state, t01),
            num_steps=100,
            generator=generator,
        )
    frequencies = torch.bincount(process.decode(state), minlength=num_classes) / num_atoms
    torch.testing.assert_close(frequencies, probabilities, atol=0.04, rtol=0)

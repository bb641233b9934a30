"""Reverse-process samplers: Euler–Maruyama (exponential integrator) and predictor–corrector.

Both walk a time grid ``t01`` from 1 (prior) to ``t_min`` and update every process of
:class:`~kldm_cli.model.KLDM` at each step, in one loop (:func:`run_reverse` with a
:class:`ReverseStepper`) that knows the processes only through their common
``reverse_step(step, state, prediction)`` (:mod:`kldm_cli.diffusion.reverse`):

- ``em``: one network evaluation per step, then the ``"em"`` step of every process (the
  exponential integrator of the velocities/positions, Euler–Maruyama for the lattice VP-SDE and
  continuous atom types, the unmasking step of masked types);
- ``pc``: a network evaluation and the ``"corrector"`` step (Langevin, step size ``tau``) at
  time t, then a second evaluation and the ``"predictor"`` step (DDIM-type for the positions,
  the lattice and continuous types; unmasking for masked types) — two network evaluations per
  step, as in the paper's KLDM (PC) rows.

The network is evaluated in one place, :meth:`~kldm_cli.model.KLDM.predict` (through
:class:`_Evaluator`, which prepares what is fixed for the batch).

The grid is uniform by default; ``SamplerConfig.time_grid = "power[:ρ]"`` concentrates the steps
near the data end (see :func:`time_grid`).

Engine (what makes a step cheap; ``benchmarks/bench_sampling.py`` measures it):

- everything that does not depend on the noisy state is computed once per batch, not once per
  network evaluation: the edge list and its pairing, in-degrees and atoms per crystal
  (:class:`~kldm_cli.nn.cspnet.EdgeGraph`) and, for CSP, the one-hot node features;
- the whole batch is one tensor program (no Python loop over crystals), batches are filled up to
  an atom budget (:func:`kldm_cli.sampling.pipeline.plan_batches`), and sampling runs under
  ``torch.inference_mode``;
- on CUDA, opt-in and unmeasured so far: ``cuda_graph=True`` captures one sampler step in a CUDA
  graph and replays it; ``bf16=True`` runs the network under bf16 autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kldm_cli.config import SamplerConfig
from kldm_cli.data.batch import batch_index_from_num_atoms, fully_connected_edges
from kldm_cli.diffusion.reverse import ReverseProcess, ReverseStep, StepContext, StepKind
from kldm_cli.model import KLDM, SampleState
from kldm_cli.nn import NetworkOutput
from kldm_cli.nn.cspnet import EdgeGraph
from kldm_cli.threads import physical_cores, set_threads  # noqa: F401  (re-exported)

#: Exponent of ``time_grid="power"`` when none is given (``"power"`` = ``"power:2"``).
DEFAULT_GRID_POWER = 2.0
TIME_GRIDS = ("uniform", "power")


@dataclass
class Samples:
    """Generated crystals of one batch, as tensors on the CPU."""

    frac_coords: Tensor  # [N, 3] in [0, 1)
    lengths: Tensor  # [B, 3] Å
    angles: Tensor  # [B, 3] degrees
    atomic_numbers: Tensor  # [N]
    num_atoms: Tensor  # [B]

    def split(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per crystal: (frac_coords [K,3], lengths [3], angles [3], atomic_numbers [K])."""
        coords = torch.split(self.frac_coords, self.num_atoms.tolist())
        numbers = torch.split(self.atomic_numbers, self.num_atoms.tolist())
        return [
            (coords[i], self.lengths[i], self.angles[i], numbers[i])
            for i in range(len(self.num_atoms))
        ]


# ---------------------------------------------------------------------- time grid
def parse_time_grid(spec: str) -> tuple[str, float]:
    """``"uniform"`` → ("uniform", 1.0); ``"power"`` → ("power", 2.0); ``"power:3"`` →
    ("power", 3.0). Raises ``ValueError`` naming the offending spec."""
    name, _, argument = spec.strip().partition(":")
    if name not in TIME_GRIDS:
        raise ValueError(f"Unknown time grid {spec!r}; choose uniform, power or power:RHO")
    if name == "uniform":
        if argument:
            raise ValueError(f"the uniform time grid takes no parameter, got {spec!r}")
        return name, 1.0
    try:
        power = float(argument) if argument else DEFAULT_GRID_POWER
    except ValueError as err:
        raise ValueError(f"time grid {spec!r}: RHO must be a number") from err
    if not power >= 1.0:
        raise ValueError(f"time grid {spec!r}: RHO must be >= 1 (1 is the uniform grid)")
    return name, power


def time_grid(
    num_steps: int,
    t_min: float = 1e-3,
    device: torch.device | str = "cpu",
    kind: str = "uniform",
) -> Tensor:
    """The ``num_steps + 1`` times from 1 down to ``t_min`` (float64, strictly decreasing).

    ``kind="uniform"``: evenly spaced. ``kind="power:ρ"`` (``"power"``: ρ = 2): the EDM-style
    grid of Karras et al. (2022, eq. 5) in ``t01``,

        t_i = (1 + (i / num_steps) (t_min^{1/ρ} - 1))^ρ,

    evenly spaced in ``t01^{1/ρ}``, so steps shrink towards the data end (ρ = 1 is uniform).
    """
    if num_steps < 1:
        raise ValueError(f"the number of steps must be at least 1, got {num_steps}")
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    name, power = parse_time_grid(kind)
    if name == "uniform" or power == 1.0:
        return torch.linspace(1.0, t_min, num_steps + 1, device=device, dtype=torch.float64)
    ramp = torch.linspace(1.0, t_min ** (1.0 / power), num_steps + 1, dtype=torch.float64)
    grid = ramp.pow(power)
    grid[0], grid[-1] = 1.0, t_min  # exact end points
    return grid.to(device)


# ---------------------------------------------------------------------- prior
def prior_state(
    model: KLDM,
    batch_index: Tensor,
    num_crystals: int,
    generator: torch.Generator | None,
) -> SampleState:
    """Draw x_1 from the prior of every modality."""
    frac_coords, velocity = model.positions.prior(batch_index, num_crystals, generator=generator)
    lattice_params = model.lattice.prior((num_crystals, 6), generator=generator)
    type_state = None
    if model.types is not None:
        type_state = model.types.prior(batch_index.numel(), generator=generator)
    return SampleState(frac_coords, velocity, lattice_params, type_state)


def _to_device(state: SampleState, device: torch.device) -> SampleState:
    move = lambda x: None if x is None else x.to(device)  # noqa: E731
    return SampleState(
        move(state.frac_coords), move(state.velocity), move(state.lattice_params),
        move(state.type_state),
    )  # fmt: skip


# ---------------------------------------------------------------------- network evaluation
class _Evaluator:
    """One network evaluation on a batch whose graph and (CSP) node features are fixed.

    Everything that does not depend on the noisy state is prepared once here and reused by
    every evaluation of the run (both evaluations of a PC step included). Called with the
    state of each process, it returns the prediction for each process (what
    :class:`ReverseStepper` needs); the network itself is called by :meth:`KLDM.predict`.
    """

    def __init__(
        self,
        model: KLDM,
        type_index: Tensor | None,
        batch_index: Tensor,
        edge_index: Tensor,
        num_crystals: int,
        bf16: bool = False,
    ) -> None:
        self.model = model
        self.batch_index = batch_index
        self.edge_index = edge_index
        self.num_crystals = num_crystals
        self.bf16 = bf16
        self.graph = EdgeGraph.build(edge_index, batch_index, num_crystals, model.network_dtype)
        # CSP: the composition is given, so the node features never change.
        self.node_features = model.node_features(type_index, None) if model.types is None else None

    def __call__(self, t01: Tensor, states: dict[str, Any]) -> dict[str, Tensor]:
        state = self.model.sample_state(states)
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
            if self.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.model.predict(
                t01, state, None, self.batch_index, self.edge_index, self.num_crystals,
                node_features=self.node_features, graph=self.graph,
            )  # fmt: skip
        if self.bf16:
            dtype = state.frac_coords.dtype
            out = NetworkOutput(
                velocity=out.velocity.to(dtype),
                lattice=out.lattice.to(dtype),
                types=None if out.types is None else out.types.float(),
            )
        return self.model.process_predictions(out)


# ---------------------------------------------------------------------- the sampler loop
#: The process steps of one sampler step, in order: EM is one exponential-integrator /
#: Euler–Maruyama step; PC a Langevin corrector at t, then the predictor from t to t + dt.
SAMPLER_STEPS: dict[str, tuple[StepKind, ...]] = {
    "em": ("em",),
    "pc": ("corrector", "predictor"),
}

#: ``predict(t01 [B], states) -> predictions``: one network evaluation, by process name.
Predict = Callable[[Tensor, dict[str, Any]], Mapping[str, Tensor]]


class ReverseStepper:
    """One sampler step ``x_t → x_{t+dt}`` over any set of processes.

    For every process step of the sampler (:data:`SAMPLER_STEPS`): one call of ``predict``,
    then every process takes that step through its ``reverse_step`` (in the order of
    ``processes``, which fixes the order of random draws).
    """

    def __init__(
        self,
        processes: Mapping[str, ReverseProcess],
        predict: Predict,
        method: str,
        context: StepContext,
        generator: torch.Generator | None = None,
    ) -> None:
        if method not in SAMPLER_STEPS:
            raise ValueError(f"Unknown sampler {method!r}; choose pc or em")
        self.processes, self.predict, self.context = dict(processes), predict, context
        self.kinds, self.generator = SAMPLER_STEPS[method], generator

    def __call__(
        self,
        t01: Tensor,
        dt: float,
        states: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        if generator is None:
            generator = self.generator
        for kind in self.kinds:
            step = ReverseStep(kind, t01, dt, self.context, generator)
            predictions = self.predict(t01, states)
            states = {
                name: process.reverse_step(step, states[name], predictions[name])
                for name, process in self.processes.items()
            }
        return states


def run_reverse(
    step: ReverseStepper,
    states: dict[str, Any],
    grid: Tensor,
    progress: Callable[[int, int], None] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The sampler loop: walk ``grid`` (from 1 down to t_min) with ``step``.

    ``t01`` is one time per crystal (``[B]``, ``dtype``, default the default dtype) on the device
    of the batch; ``dt`` is the (negative) grid step as a float.
    """
    num_steps = grid.numel() - 1
    times, steps = grid.tolist(), (grid[1:] - grid[:-1]).tolist()
    context = step.context
    for index in range(num_steps):
        t01 = torch.full(
            (context.num_crystals,), times[index], device=context.batch_index.device,
            dtype=dtype or torch.get_default_dtype(),
        )  # fmt: skip
        states = step(t01, steps[index], states)
        if progress is not None:
            progress(index + 1, num_steps)
    return states


# ---------------------------------------------------------------------- sampling
@torch.inference_mode()
def sample(
    model: KLDM,
    num_atoms: Tensor,
    atomic_numbers: Tensor | None = None,
    sampler: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    cuda_graph: bool = False,
    bf16: bool = False,
) -> Samples:
    """Run the reverse process for crystals of ``num_atoms`` [B] atoms.

    ``atomic_numbers`` [N] is required for CSP (the composition is given) and ignored for DNG.
    Random draws use ``generator``, so a seed fixes the output.

    CUDA only, opt-in (not yet measured on a GPU): ``cuda_graph`` captures one sampler step in a
    CUDA graph and replays it for every step (CSP, uniform grid; ``generator`` must be a CUDA
    generator or ``None``); ``bf16`` runs the network under bf16 autocast (the processes stay in
    float32/float64). Check the match rate before relying on ``bf16``.
    """
    sampler = sampler or model.config.sampler
    device = next(model.parameters()).device
    _check_engine_options(model, device, sampler, generator, cuda_graph, bf16)
    num_atoms = num_atoms.to(torch.long).cpu()
    num_crystals = int(num_atoms.numel())
    batch_index, _ = batch_index_from_num_atoms(num_atoms)
    edge_index = fully_connected_edges(num_atoms)
    type_index = None
    if model.types is None:
        if atomic_numbers is None:
            raise ValueError("CSP sampling needs the atomic numbers of every atom")
        type_index = model.element_index(atomic_numbers.to(torch.long).cpu()).to(device)

    state = _to_device(prior_state(model, batch_index, num_crystals, generator), device)
    batch_index, edge_index = batch_index.to(device), edge_index.to(device)
    evaluate = _Evaluator(model, type_index, batch_index, edge_index, num_crystals, bf16)
    grid = time_grid(sampler.num_steps, model.config.train.t_min, kind=sampler.time_grid)
    context = StepContext(batch_index, num_crystals, tau=sampler.corrector_tau)
    step = ReverseStepper(model.processes(), evaluate, sampler.method, context, generator)
    states = model.process_states(state)
    if cuda_graph:
        states = _run_cuda_graph(step, states, grid, progress)
    else:
        states = run_reverse(step, states, grid, progress, dtype=state.frac_coords.dtype)
    return _finalize(model, model.sample_state(states), type_index, num_atoms)


def _check_engine_options(
    model: KLDM,
    device: torch.device,
    sampler: SamplerConfig,
    generator: torch.Generator | None,
    cuda_graph: bool,
    bf16: bool,
) -> None:
    parse_time_grid(sampler.time_grid)
    if sampler.method not in SAMPLER_STEPS:
        raise ValueError(f"Unknown sampler {sampler.method!r}; choose pc or em")
    if (cuda_graph or bf16) and (device.type != "cuda" or not torch.cuda.is_available()):
        flag = "cuda_graph" if cuda_graph else "bf16"
        raise ValueError(f"{flag} needs the model on a CUDA GPU, got device {device}")
    if not cuda_graph:
        return
    if model.types is not None:
        raise ValueError("cuda_graph supports CSP only (the DNG type steps synchronise)")
    if parse_time_grid(sampler.time_grid)[0] != "uniform":
        raise ValueError("cuda_graph needs the uniform time grid (one captured step, fixed dt)")
    if generator is not None and generator.device.type != "cuda":
        raise ValueError(
            "cuda_graph needs a CUDA generator (or None): draws from a CPU generator would be "
            "frozen into the graph"
        )


# ---------------------------------------------------------------------- CUDA graph
def _tensors(states: dict[str, Any]) -> list[Tensor]:
    """Every tensor of the process states, in a fixed order."""
    flat: list[Tensor] = []
    for value in states.values():
        flat.extend(value if isinstance(value, tuple) else (value,))
    return flat


def _clone(states: dict[str, Any]) -> dict[str, Any]:
    return {
        name: tuple(x.clone() for x in value) if isinstance(value, tuple) else value.clone()
        for name, value in states.items()
    }


class _StaticStep:
    """A sampler step on fixed buffers: reads ``t01`` and the state from them and writes the new
    state back in place, so the same memory serves every step (what a CUDA graph replays)."""

    def __init__(self, step: ReverseStepper, states: dict[str, Any], dt: float) -> None:
        self.step, self.dt = step, dt
        like = _tensors(states)[0]
        self.t01 = torch.empty(step.context.num_crystals, device=like.device, dtype=like.dtype)
        self.states = _clone(states)

    def load(self, states: dict[str, Any]) -> None:
        for buffer, value in zip(_tensors(self.states), _tensors(states), strict=True):
            buffer.copy_(value)

    def __call__(self, generator: torch.Generator | None = None) -> None:
        self.load(self.step(self.t01, self.dt, self.states, generator))

    def result(self) -> dict[str, Any]:
        return _clone(self.states)


def _run_cuda_graph(
    step: ReverseStepper,
    states: dict[str, Any],
    grid: Tensor,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Capture one step in a CUDA graph, then replay it once per grid step.

    Only the uniform grid is allowed (checked before), so ``dt`` is the same at every step and
    can be a constant of the graph; ``t01`` is a static buffer filled before each replay. Draws
    inside the graph use the run's CUDA generator registered with the graph (graph-safe Philox
    offsets), or the default CUDA generator. Warm-up runs on copies with a throw-away generator,
    so the run's random stream starts where an eager run's would.
    """
    times = grid.tolist()
    num_steps = len(times) - 1
    dt = (times[-1] - times[0]) / num_steps
    static = _StaticStep(step, states, dt)
    device = static.t01.device
    warmup_generator = torch.Generator(device=device).manual_seed(0)
    side_stream = torch.cuda.Stream(device=device)
    side_stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side_stream):
        static.t01.fill_(times[0])
        for _ in range(2):
            static(warmup_generator)
    torch.cuda.current_stream(device).wait_stream(side_stream)
    static.load(states)
    graph = torch.cuda.CUDAGraph()
    generator = step.generator
    if generator is not None:
        if not hasattr(graph, "register_generator_state"):
            raise ValueError("this torch cannot register a generator with a CUDA graph (< 2.5)")
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        static()
    for index in range(num_steps):
        static.t01.fill_(times[index])
        graph.replay()
        if progress is not None:
            progress(index + 1, num_steps)
    return static.result()


def _finalize(
    model: KLDM, state: SampleState, type_index: Tensor | None, num_atoms: Tensor
) -> Samples:
    if model.types is not None:
        type_index = model.types.decode(state.type_state)
    lengths, angles = model.lattice_transform.decode(state.lattice_params.double().cpu(), num_atoms)
    return Samples(
        frac_coords=torch.remainder(state.frac_coords.double().cpu(), 1.0),
        lengths=lengths.double(),
        angles=angles.double(),
        atomic_numbers=model.atomic_numbers(type_index).cpu(),
        num_atoms=num_atoms,
    )

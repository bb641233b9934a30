"""Tests of the invariant message-passing network :class:`kldm_cli.nn.CSPNet`."""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from tests.symmetry import (
    TOLERANCES,
    CrystalInputs,
    assert_mean_free,
    assert_rotation_invariant,
    assert_symmetric,
    normalised_error,
    offset_atom_field,
    permute_atoms,
    shift_periodic,
    symmetry_errors,
    translate_one_atom,
)

import kldm_cli.nn
from kldm_cli.config import NetworkConfig
from kldm_cli.nn import CSPNet, NetworkOutput

NODE_INPUT_DIM = 5
TYPE_OUTPUT_DIM = 3
CONFIG = NetworkConfig(
    hidden_dim=16,
    num_layers=2,
    num_freqs=4,
    time_dim=8,
    node_input_dim=NODE_INPUT_DIM,
    type_output_dim=TYPE_OUTPUT_DIM,
)
ATOM_OUTPUTS = {"velocity", "types"}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def fully_connected_edges(batch_index: torch.Tensor) -> torch.Tensor:
    """``[2, E]`` all ordered pairs of distinct atoms of the same crystal."""
    same_crystal = batch_index.unsqueeze(0) == batch_index.unsqueeze(1)
    same_crystal.fill_diagonal_(False)
    return same_crystal.nonzero().t()


def make_network(
    generator: torch.Generator, config: NetworkConfig = CONFIG, fused: bool = True
) -> CSPNet:
    """A float64 network whose parameters (LayerNorm included) are all random."""
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    network = CSPNet(config, fused=fused).double()
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "norm" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return network


def random_inputs(
    atoms_per_crystal: list[int], generator: torch.Generator, node_input_dim: int = NODE_INPUT_DIM
) -> CrystalInputs:
    """A float64 batch of random crystals with the given numbers of atoms."""
    num_crystals = len(atoms_per_crystal)
    batch_index = torch.repeat_interleave(
        torch.arange(num_crystals), torch.tensor(atoms_per_crystal)
    )
    num_atoms = batch_index.shape[0]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    return CrystalInputs(
        frac_coords=torch.rand(num_atoms, 3, generator=generator, dtype=torch.float64),
        lattice_params=randn(num_crystals, 6),
        batch_index=batch_index,
        num_crystals=num_crystals,
        atom_fields={
            "velocity": randn(num_atoms, 3),
            "node_features": randn(num_atoms, node_input_dim),
        },
        crystal_fields={"t01": torch.rand(num_crystals, generator=generator, dtype=torch.float64)},
    )


def run(network: CSPNet, inputs: CrystalInputs) -> NetworkOutput:
    return network(
        inputs.crystal_fields["t01"],
        inputs.atom_fields["node_features"],
        inputs.frac_coords,
        inputs.atom_fields["velocity"],
        inputs.lattice_params,
        inputs.batch_index,
        fully_connected_edges(inputs.batch_index),
        inputs.num_crystals,
    )


def as_dict(output: NetworkOutput) -> dict[str, torch.Tensor | None]:
    return {"velocity": output.velocity, "lattice": output.lattice, "types": output.types}


def network_fn(network: CSPNet):
    return lambda inputs: as_dict(run(network, inputs))


# ---------------------------------------------------------------------------------------------
# Symmetries
# ---------------------------------------------------------------------------------------------


SYMMETRY_OPS = [permute_atoms, shift_periodic, translate_one_atom, offset_atom_field("velocity")]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "baseline"])
@pytest.mark.parametrize("operation", SYMMETRY_OPS, ids=lambda op: op.__name__)
def test_invariances(operation, fused, generator):
    network = make_network(generator, fused=fused)
    inputs = random_inputs([4, 1, 6, 3], generator)
    assert_symmetric(
        network_fn(network), inputs, operation, atom_outputs=ATOM_OUTPUTS, generator=generator
    )


def test_invariances_float32(generator):
    network = make_network(generator).float()
    inputs = random_inputs([4, 2, 5], generator)
    for operation in SYMMETRY_OPS:
        assert_symmetric(
            network_fn(network),
            inputs,
            operation,
            atom_outputs=ATOM_OUTPUTS,
            generator=generator,
            dtype=torch.float32,
        )


def test_symmetry_helper_detects_a_broken_symmetry(generator):
    """The helper must fail on outputs that see raw coordinates or are not permuted along."""
    inputs = random_inputs([4, 3], generator)

    def raw_coordinates(batch: CrystalInputs) -> dict[str, torch.Tensor]:
        return {"velocity": batch.frac_coords * 1.0}

    for operation in (shift_periodic, translate_one_atom, permute_atoms):
        errors = symmetry_errors(
            raw_coordinates, inputs, operation, atom_outputs=(), generator=generator
        )
        assert errors["velocity"] > 1e-3, operation.__name__


def test_output_depends_on_every_input(generator):
    """Invariance must not come from ignoring the inputs: change each one, every output moves."""
    network = make_network(generator)
    inputs = random_inputs([4, 3], generator)
    reference = as_dict(run(network, inputs))
    one_atom_moved = inputs.frac_coords.clone()
    one_atom_moved[0] += 0.1  # a common shift is a symmetry: move one atom only
    changed = {
        "frac_coords": replace(inputs, frac_coords=one_atom_moved),
        "lattice_params": replace(inputs, lattice_params=inputs.lattice_params + 0.1),
        "t01": replace(inputs, crystal_fields={"t01": inputs.crystal_fields["t01"] * 0.5}),
    }
    for name in ("velocity", "node_features"):
        fields = {**inputs.atom_fields, name: inputs.atom_fields[name] * 1.5}
        changed[name] = replace(inputs, atom_fields=fields)
    for name, changed_inputs in changed.items():
        for key, value in as_dict(run(network, changed_inputs)).items():
            assert normalised_error(value, reference[key]) > 1e-6, (name, key)


def test_velocity_is_mean_free(generator):
    network = make_network(generator)
    inputs = random_inputs([4, 1, 6, 3], generator)
    output = run(network, inputs)
    assert_mean_free(output.velocity, inputs.batch_index, inputs.num_crystals)
    assert output.velocity.abs().max() > 1e-3  # not trivially zero


def _featurize(structure: Structure, network: CSPNet) -> dict[str, torch.Tensor | None]:
    """Structure -> network outputs: one-hot (Z - 1) features, log lengths and angles (rad)."""
    num_atoms = len(structure)
    numbers = torch.tensor([site.specie.Z - 1 for site in structure])
    node_features = torch.nn.functional.one_hot(numbers, 100).double()
    a, b, c, alpha, beta, gamma = structure.lattice.parameters
    lattice_params = torch.tensor(
        [[math.log(a), math.log(b), math.log(c), *np.radians([alpha, beta, gamma])]],
        dtype=torch.float64,
    )
    frac_coords = torch.remainder(torch.tensor(structure.frac_coords), 1.0)
    velocity = torch.linspace(-1.0, 1.0, 3 * num_atoms, dtype=torch.float64).reshape(-1, 3)
    batch_index = torch.zeros(num_atoms, dtype=torch.long)
    output = network(
        torch.tensor([0.3], dtype=torch.float64),
        node_features,
        frac_coords,
        velocity,
        lattice_params,
        batch_index,
        fully_connected_edges(batch_index),
        1,
    )
    return as_dict(output)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "baseline"])
def test_rotation_invariance(fused, generator):
    config = replace(CONFIG, node_input_dim=100)
    network = make_network(generator, config, fused=fused)
    structure = Structure(
        Lattice.from_parameters(4.1, 5.3, 6.2, 80.0, 95.0, 105.0),
        ["Si", "O", "O", "Na"],
        [[0.0, 0.0, 0.0], [0.25, 0.5, 0.1], [0.999, 0.3, 0.7], [0.5, 0.5, 0.5]],
    )
    assert_rotation_invariant(
        lambda s: _featurize(s, network), structure, generator=generator, num_trials=3
    )


# ---------------------------------------------------------------------------------------------
# Batching, edge cases, formulations
# ---------------------------------------------------------------------------------------------


def _crystal(inputs: CrystalInputs, crystal: int) -> CrystalInputs:
    atoms = inputs.batch_index == crystal
    return CrystalInputs(
        frac_coords=inputs.frac_coords[atoms],
        lattice_params=inputs.lattice_params[crystal : crystal + 1],
        batch_index=torch.zeros(int(atoms.sum()), dtype=torch.long),
        num_crystals=1,
        atom_fields={k: v[atoms] for k, v in inputs.atom_fields.items()},
        crystal_fields={k: v[crystal : crystal + 1] for k, v in inputs.crystal_fields.items()},
    )


def test_batch_independence(generator):
    network = make_network(generator)
    inputs = random_inputs([3, 1, 5, 2], generator)
    batched = run(network, inputs)
    for crystal in range(inputs.num_crystals):
        alone = run(network, _crystal(inputs, crystal))
        atoms = inputs.batch_index == crystal
        for key, value in as_dict(alone).items():
            part = as_dict(batched)[key]
            part = part[crystal : crystal + 1] if key == "lattice" else part[atoms]
            assert normalised_error(part, value) <= TOLERANCES[torch.float64], (crystal, key)


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("type_output_dim", [0, TYPE_OUTPUT_DIM])
def test_fused_matches_baseline(layer_norm, type_output_dim, generator):
    config = replace(CONFIG, layer_norm=layer_norm, type_output_dim=type_output_dim)
    fused = make_network(generator, config, fused=True)
    baseline = CSPNet(config, fused=False).double()
    baseline.load_state_dict(fused.state_dict(), strict=True)
    inputs = random_inputs([4, 1, 6, 3], generator)
    outputs = {}
    for name, network in (("fused", fused), ("baseline", baseline)):
        output = run(network, inputs)
        loss = sum(
            (value * value.detach().sin()).sum()
            for value in as_dict(output).values()
            if value is not None
        )
        grads = torch.autograd.grad(loss, list(network.parameters()))
        outputs[name] = (as_dict(output), grads)
    (fused_out, fused_grads), (base_out, base_grads) = outputs["fused"], outputs["baseline"]
    assert (fused_out["types"] is None) == (type_output_dim == 0)
    for key, value in fused_out.items():
        if value is not None:
            assert normalised_error(value, base_out[key]) <= 1e-10, key
    for fused_grad, base_grad in zip(fused_grads, base_grads, strict=True):
        assert normalised_error(fused_grad, base_grad) <= 1e-10


def test_single_atom_crystals(generator):
    network = make_network(generator)
    for atoms_per_crystal in ([1], [1, 1, 1], [1, 4, 1]):
        inputs = random_inputs(atoms_per_crystal, generator)
        output = run(network, inputs)
        for value in as_dict(output).values():
            assert torch.isfinite(value).all()
        single = torch.tensor(atoms_per_crystal)[inputs.batch_index] == 1
        assert torch.equal(output.velocity[single], torch.zeros_like(output.velocity[single]))
        loss = output.lattice.square().sum() + output.types.square().sum()
        loss.backward()
        for parameter in network.parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all()
        network.zero_grad()


def test_gradient_reaches_every_parameter(generator):
    network = make_network(generator)
    inputs = random_inputs([4, 3], generator)
    output = run(network, inputs)
    loss = sum(
        (value * torch.randn(value.shape, generator=generator, dtype=torch.float64)).sum()
        for value in as_dict(output).values()
    )
    loss.backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().max() > 0, name


@pytest.mark.parametrize("preset", ["tiny", "small", "medium", "paper"])
def test_presets_build_and_run(preset, generator):
    config = NetworkConfig.preset(preset, node_input_dim=NODE_INPUT_DIM, type_output_dim=2)
    network = CSPNet(config)
    inputs = random_inputs([2, 3], generator).to(torch.float32)
    with torch.no_grad():
        output = run(network, inputs)
    assert output.velocity.shape == (5, 3)
    assert output.lattice.shape == (2, 6)
    assert output.types.shape == (5, 2)
    assert CSPNet(NetworkConfig.preset(preset)).type_head is None


def test_time_frequencies_are_saved_with_the_weights(generator):
    torch.manual_seed(0)
    first = CSPNet(CONFIG).double()
    torch.manual_seed(1)
    second = CSPNet(CONFIG).double()
    assert "time_embedding.frequencies" in first.state_dict()
    inputs = random_inputs([3, 2], generator)
    assert normalised_error(run(second, inputs).lattice, run(first, inputs).lattice) > 1e-6
    second.load_state_dict(first.state_dict(), strict=True)
    assert normalised_error(run(second, inputs).lattice, run(first, inputs).lattice) == 0.0


def test_bad_inputs_raise_value_error(generator):
    network = make_network(generator)
    inputs = random_inputs([3, 2], generator)
    args = dict(
        t01=inputs.crystal_fields["t01"],
        node_features=inputs.atom_fields["node_features"],
        frac_coords=inputs.frac_coords,
        velocity=inputs.atom_fields["velocity"],
        lattice_params=inputs.lattice_params,
        batch_index=inputs.batch_index,
        edge_index=fully_connected_edges(inputs.batch_index),
        num_crystals=2,
    )
    bad = {
        "node_features": torch.zeros(5, NODE_INPUT_DIM + 1, dtype=torch.float64),
        "lattice_params": torch.zeros(2, 5, dtype=torch.float64),
        "t01": torch.zeros(3, dtype=torch.float64),
        "edge_index": torch.zeros(3, 4, dtype=torch.long),
        "batch_index": inputs.batch_index.int(),
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            network(**{**args, name: value})
    with pytest.raises(ValueError, match="time_dim"):
        CSPNet(replace(CONFIG, time_dim=7))


def test_nn_imports_no_diffusion_or_graph_library():
    forbidden = ("kldm_cli.diffusion", "torch_geometric", "torch_scatter")
    for path in Path(kldm_cli.nn.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"

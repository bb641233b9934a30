"""Shared symmetry test helper (in the spirit of ``e3nn.util.test.assert_equivariant``).

A function under test maps a batch of crystals (:class:`CrystalInputs`) to a dict of named output
tensors, each either per atom (``[N, ...]``) or per crystal (``[B, ...]``). The helpers apply random
symmetry operations in float64 and report the worst error over a few trials, normalised by the size
of the output (``max |out(op x) - op out(x)| / max(1, max |op out(x)|)``):

* :func:`permute_atoms` -- permute the atoms inside each crystal; per-atom outputs permute along,
* :func:`shift_periodic` -- add one random shift per crystal to all its fractional coordinates,
  wrapped back to ``[0, 1)``,
* :func:`translate_one_atom` -- add a random non-zero integer lattice vector to one atom of each
  crystal (coordinates leave ``[0, 1)`` on purpose),
* :func:`offset_atom_field` -- add one random vector per crystal to a per-atom field (for example a
  common velocity),
* :func:`assert_rotation_invariant` -- rotate a pymatgen ``Structure`` (lattice and Cartesian
  coordinates; fractional coordinates unchanged) and compare ``fn(structure)`` outputs.

Usage::

    errors = symmetry_errors(fn, inputs, permute_atoms, atom_outputs={"velocity"}, generator=g)
    assert_symmetric(fn, inputs, shift_periodic, atom_outputs={"velocity"}, generator=g)

Tolerances are per dtype (:data:`TOLERANCES`). A test that runs the function in float32 passes
``dtype=torch.float32``; everything is cast to ``dtype`` before calling ``fn``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Worst acceptable normalised error per dtype.
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.bfloat16: 5e-2,
    torch.float16: 1e-2,
}

Outputs = dict[str, Tensor]


@dataclass(frozen=True)
class CrystalInputs:
    """A batch of ``B`` crystals with ``N`` atoms, as a function under test sees it.

    Attributes:
        frac_coords: ``[N, 3]`` fractional coordinates.
        lattice_params: ``[B, 6]`` lattice numbers.
        batch_index: ``[N]`` long, crystal of each atom (sorted).
        num_crystals: ``B``.
        atom_fields: other per-atom tensors ``[N, ...]`` (velocities, atom features); they move
            with their atom under permutations and are left alone by coordinate shifts.
        crystal_fields: other per-crystal tensors ``[B, ...]`` (for example ``t01``).
    """

    frac_coords: Tensor
    lattice_params: Tensor
    batch_index: Tensor
    num_crystals: int
    atom_fields: dict[str, Tensor] = field(default_factory=dict)
    crystal_fields: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_atoms(self) -> int:
        return self.frac_coords.shape[0]

    def to(self, dtype: torch.dtype) -> CrystalInputs:
        """Cast every floating-point tensor to ``dtype``."""

        def cast(tensor: Tensor) -> Tensor:
            return tensor.to(dtype) if tensor.is_floating_point() else tensor

        return dataclasses.replace(
            self,
            frac_coords=cast(self.frac_coords),
            lattice_params=cast(self.lattice_params),
            atom_fields={k: cast(v) for k, v in self.atom_fields.items()},
            crystal_fields={k: cast(v) for k, v in self.crystal_fields.items()},
        )

    def select_atoms(self, order: Tensor) -> CrystalInputs:
        """Reorder the atoms: atom ``a`` of the result is atom ``order[a]`` of ``self``."""
        return dataclasses.replace(
            self,
            frac_coords=self.frac_coords[order],
            batch_index=self.batch_index[order],
            atom_fields={k: v[order] for k, v in self.atom_fields.items()},
        )


#: A symmetry operation: ``(inputs, generator) -> (transformed inputs, atom order)``, where atom
#: ``a`` of the transformed batch is atom ``order[a]`` of the original one (identity if the
#: operation does not reorder atoms).
SymmetryOp = Callable[[CrystalInputs, torch.Generator], tuple[CrystalInputs, Tensor]]


def _identity_order(inputs: CrystalInputs) -> Tensor:
    return torch.arange(inputs.num_atoms, device=inputs.batch_index.device)


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(like)


def permute_atoms(
    inputs: CrystalInputs, generator: torch.Generator
) -> tuple[CrystalInputs, Tensor]:
    """Random permutation of the atoms within each crystal (``batch_index`` stays sorted)."""
    keys = torch.rand(inputs.num_atoms, generator=generator, dtype=torch.float64)
    order = torch.argsort(inputs.batch_index.cpu().to(torch.float64) * 2.0 + keys)
    order = order.to(inputs.batch_index.device)
    return inputs.select_atoms(order), order


def shift_periodic(
    inputs: CrystalInputs, generator: torch.Generator
) -> tuple[CrystalInputs, Tensor]:
    """Add one random shift in ``[0, 1)^3`` per crystal to all its atoms, wrapped to ``[0, 1)``."""
    shift = _uniform((inputs.num_crystals, 3), inputs.frac_coords, generator)
    shifted = torch.remainder(inputs.frac_coords + shift[inputs.batch_index], 1.0)
    return dataclasses.replace(inputs, frac_coords=shifted), _identity_order(inputs)


def translate_one_atom(
    inputs: CrystalInputs, generator: torch.Generator
) -> tuple[CrystalInputs, Tensor]:
    """Add a random non-zero integer vector in ``{-3..3}^3`` to one random atom per crystal."""
    frac_coords = inputs.frac_coords.clone()
    batch_index = inputs.batch_index.cpu()
    for crystal in range(inputs.num_crystals):
        atoms = torch.nonzero(batch_index == crystal).flatten()
        if atoms.numel() == 0:
            continue
        atom = atoms[torch.randint(atoms.numel(), (1,), generator=generator)].item()
        vector = torch.zeros(3, dtype=torch.long)
        while not vector.any():
            vector = torch.randint(-3, 4, (3,), generator=generator)
        frac_coords[atom] += vector.to(frac_coords)
    return dataclasses.replace(inputs, frac_coords=frac_coords), _identity_order(inputs)


def offset_atom_field(name: str) -> SymmetryOp:
    """Operation adding one random normal vector per crystal to the per-atom field ``name``."""

    def operation(
        inputs: CrystalInputs, generator: torch.Generator
    ) -> tuple[CrystalInputs, Tensor]:
        values = inputs.atom_fields[name]
        offset = torch.randn(
            (inputs.num_crystals, *values.shape[1:]), generator=generator, dtype=torch.float64
        ).to(values)
        fields = {**inputs.atom_fields, name: values + offset[inputs.batch_index]}
        return dataclasses.replace(inputs, atom_fields=fields), _identity_order(inputs)

    operation.__name__ = f"offset_atom_field({name!r})"
    return operation


def normalised_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max(1, max |expected|)`` (0 for empty tensors)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    scale = max(1.0, expected.detach().abs().max().item())
    return (actual.detach() - expected.detach()).abs().max().item() / scale


def symmetry_errors(
    fn: Callable[[CrystalInputs], Outputs],
    inputs: CrystalInputs,
    operation: SymmetryOp,
    *,
    atom_outputs: Iterable[str],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    num_trials: int = 3,
) -> dict[str, float]:
    """Worst normalised error of each output of ``fn`` over ``num_trials`` random ``operation``s.

    Outputs named in ``atom_outputs`` are per atom and are reordered like the atoms; all other
    outputs are per crystal and must be unchanged. ``None`` outputs are skipped.
    """
    atom_outputs = set(atom_outputs)
    inputs = inputs.to(dtype)
    reference = {k: v for k, v in fn(inputs).items() if v is not None}
    errors = dict.fromkeys(reference, 0.0)
    for _ in range(num_trials):
        transformed, order = operation(inputs, generator)
        outputs = fn(transformed)
        for name, expected in reference.items():
            if name in atom_outputs:
                expected = expected[order]
            errors[name] = max(errors[name], normalised_error(outputs[name], expected))
    return errors


def assert_symmetric(
    fn: Callable[[CrystalInputs], Outputs],
    inputs: CrystalInputs,
    operation: SymmetryOp,
    *,
    atom_outputs: Iterable[str],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    num_trials: int = 3,
    tolerance: float | None = None,
) -> dict[str, float]:
    """Assert that every output of ``fn`` transforms as :func:`symmetry_errors` expects.

    Returns the errors (useful to print); ``tolerance`` defaults to ``TOLERANCES[dtype]``.
    """
    tolerance = TOLERANCES[dtype] if tolerance is None else tolerance
    errors = symmetry_errors(
        fn,
        inputs,
        operation,
        atom_outputs=atom_outputs,
        generator=generator,
        dtype=dtype,
        num_trials=num_trials,
    )
    failed = {name: err for name, err in errors.items() if not err <= tolerance}
    op_name = getattr(operation, "__name__", repr(operation))
    assert not failed, f"{op_name}: errors {failed} exceed tolerance {tolerance:g} ({dtype})"
    return errors


def mean_free_error(values: Tensor, batch_index: Tensor, num_crystals: int) -> float:
    """Largest per-crystal mean of ``values [N, D]`` (normalised like :func:`normalised_error`)."""
    total = values.new_zeros(num_crystals, values.shape[-1]).index_add_(0, batch_index, values)
    count = torch.bincount(batch_index, minlength=num_crystals).clamp_min(1).to(values)
    return normalised_error(total / count.unsqueeze(-1), torch.zeros_like(total))


def assert_mean_free(
    values: Tensor, batch_index: Tensor, num_crystals: int, tolerance: float | None = None
) -> None:
    """Assert that ``values [N, D]`` sums to zero over the atoms of each crystal."""
    tolerance = TOLERANCES[values.dtype] if tolerance is None else tolerance
    error = mean_free_error(values, batch_index, num_crystals)
    assert error <= tolerance, f"per-crystal mean {error:g} exceeds {tolerance:g}"


# ---------------------------------------------------------------------------------------------
# Rotations of pymatgen structures
# ---------------------------------------------------------------------------------------------


def random_rotation(generator: torch.Generator) -> Tensor:
    """A random proper rotation ``[3, 3]`` (float64, det +1, Haar-distributed)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotate_structure(structure: Structure, rotation: Tensor) -> Structure:
    """Rotate the lattice and the Cartesian positions ``[3, 3]`` (fractional coordinates are
    recomputed from the rotated Cartesian ones, so they agree up to rounding and wrapping)."""
    from pymatgen.core import Lattice, Structure

    rotation_t = rotation.numpy().T
    return Structure(
        Lattice(structure.lattice.matrix @ rotation_t),
        structure.species,
        structure.cart_coords @ rotation_t,
        coords_are_cartesian=True,
        site_properties=structure.site_properties or None,
    )


def rotation_errors(
    fn: Callable[[Structure], Outputs],
    structure: Structure,
    *,
    generator: torch.Generator,
    num_trials: int = 3,
) -> dict[str, float]:
    """Worst normalised error of each output of ``fn`` under random rotations of ``structure``."""
    reference = {k: v for k, v in fn(structure).items() if v is not None}
    errors = dict.fromkeys(reference, 0.0)
    for _ in range(num_trials):
        rotated = rotate_structure(structure, random_rotation(generator))
        outputs = fn(rotated)
        for name, expected in reference.items():
            errors[name] = max(errors[name], normalised_error(outputs[name], expected))
    return errors


def assert_rotation_invariant(
    fn: Callable[[Structure], Outputs],
    structure: Structure,
    *,
    generator: torch.Generator,
    num_trials: int = 3,
    tolerance: float = TOLERANCES[torch.float64],
) -> dict[str, float]:
    """Assert that every output of ``fn`` is unchanged when ``structure`` is rotated."""
    errors = rotation_errors(fn, structure, generator=generator, num_trials=num_trials)
    failed = {name: err for name, err in errors.items() if not err <= tolerance}
    assert not failed, f"rotation: errors {failed} exceed tolerance {tolerance:g}"
    return errors

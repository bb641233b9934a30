"""The lattice as six unconstrained numbers, and lattice-matrix helpers.

KLDM diffuses the lattice in a normalised parameter space (paper, "Lattice parameters"; the
reference implementation's ``ContinuousIntervalLengths`` / ``ContinuousIntervalAngles``):

* lengths ``l`` (Å) -> ``(log l - loc_n) / scale_n`` with a location and scale per number of
  atoms ``n`` fitted on the training set (:func:`fit_lattice_stats`);
* angles ``phi`` -> ``(tan(phi - pi/2) - angle_loc) / angle_scale`` (loc 0, scale 0.35), whose
  inverse ``arctan(.) + pi/2`` always lands in (0°, 180°).

An atom count absent from the statistics borrows those of the nearest count present, ``n'``
(the smaller one on a tie), with lengths rescaled by ``(n / n')^(1/3)`` (the cell volume grows
with the number of atoms): ``loc_n = loc_n' + log(n / n') / 3``, ``scale_n = scale_n'``.
A scale below :data:`MIN_LENGTH_SCALE` (e.g. 0 for a count seen once) is raised to it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from kldm_cli.config import LatticeStats
from kldm_cli.data.records import CrystalRecord

#: Smallest scale of a log length: a count seen once (std 0) still gets a ~5 % length spread.
MIN_LENGTH_SCALE = 0.05

#: Fraction of the smallest and of the largest log lengths left out before mean/std (the
#: reference keeps the central 95 %).
TRIM_FRACTION = 0.025


def fit_lattice_stats(
    records: Iterable[CrystalRecord],
    *,
    angle_loc: float = 0.0,
    angle_scale: float = 0.35,
) -> LatticeStats:
    """Location/scale of log lattice lengths per number of atoms.

    For every atom count ``n``, each of log a, log b, log c is sorted, the lowest and highest
    ``int(TRIM_FRACTION * count)`` values are dropped, and the mean and (population) standard
    deviation of the rest are the 3-vectors ``loc_n`` and ``scale_n`` (the scale floored at
    :data:`MIN_LENGTH_SCALE`). Angles get the fixed ``angle_loc`` / ``angle_scale``.
    """
    log_lengths: dict[int, list[np.ndarray]] = defaultdict(list)
    for record in records:
        log_lengths[record.num_atoms].append(np.log(record.lengths))
    if not log_lengths:
        raise ValueError("Cannot fit lattice statistics on an empty set of records")
    length_loc: dict[int, list[float]] = {}
    length_scale: dict[int, list[float]] = {}
    for num_atoms, values in sorted(log_lengths.items()):
        sorted_values = np.sort(np.stack(values), axis=0)
        trim = int(len(sorted_values) * TRIM_FRACTION)
        central = sorted_values[trim : len(sorted_values) - trim]
        length_loc[num_atoms] = central.mean(axis=0).tolist()
        length_scale[num_atoms] = np.maximum(central.std(axis=0), MIN_LENGTH_SCALE).tolist()
    return LatticeStats(
        length_loc=length_loc,
        length_scale=length_scale,
        angle_loc=float(angle_loc),
        angle_scale=float(angle_scale),
    )


class LatticeTransform:
    """Map lattice lengths/angles to the six normalised ``lattice_params`` and back."""

    def __init__(self, stats: LatticeStats) -> None:
        if not stats.length_loc:
            raise ValueError(
                "Lattice statistics are empty: fit them on training data with fit_lattice_stats"
            )
        if set(stats.length_loc) != set(stats.length_scale):
            raise ValueError("Lattice statistics have different atom counts for loc and scale")
        if not stats.angle_scale > 0:
            raise ValueError(f"angle_scale must be positive, got {stats.angle_scale!r}")
        self.stats = stats
        self._counts = np.array(sorted(stats.length_loc), dtype=np.int64)
        self._cache: dict[int, tuple[list[float], list[float]]] = {}

    def length_loc_scale_for(self, num_atoms: int) -> tuple[list[float], list[float]]:
        """``loc_n``, ``scale_n`` (3-vectors, log Å) for ``num_atoms``, with the fallback above."""
        num_atoms = int(num_atoms)
        if num_atoms < 1:
            raise ValueError(f"num_atoms must be at least 1, got {num_atoms}")
        if num_atoms not in self._cache:
            nearest = int(self._counts[np.argmin(np.abs(self._counts - num_atoms))])
            shift = math.log(num_atoms / nearest) / 3.0
            loc = [x + shift for x in self.stats.length_loc[nearest]]
            scale = [max(float(x), MIN_LENGTH_SCALE) for x in self.stats.length_scale[nearest]]
            self._cache[num_atoms] = (loc, scale)
        return self._cache[num_atoms]

    def length_loc_scale(
        self, num_atoms: Tensor, dtype: torch.dtype = torch.float64
    ) -> tuple[Tensor, Tensor]:
        """``loc [B, 3]`` and ``scale [B, 3]`` of log lengths for each crystal's atom count."""
        if num_atoms.ndim != 1:
            raise ValueError(f"num_atoms must have shape [B], got {tuple(num_atoms.shape)}")
        unique, inverse = torch.unique(num_atoms.long(), return_inverse=True)
        table = [self.length_loc_scale_for(n) for n in unique.tolist()]
        loc = torch.tensor([t[0] for t in table], dtype=dtype, device=num_atoms.device)
        scale = torch.tensor([t[1] for t in table], dtype=dtype, device=num_atoms.device)
        return loc.reshape(-1, 3)[inverse], scale.reshape(-1, 3)[inverse]

    def encode(self, lengths: Tensor, angles: Tensor, num_atoms: Tensor) -> Tensor:
        """Lattice parameters -> normalised ``lattice_params``.

        Args:
            lengths: ``[B, 3]`` a, b, c in Å.
            angles: ``[B, 3]`` alpha, beta, gamma in degrees, in (0, 180).
            num_atoms: ``[B]`` atoms per crystal.

        Returns:
            ``[B, 6]``: three normalised log lengths, three normalised ``tan(angle - pi/2)``,
            in the dtype of ``lengths``.
        """
        _check_pair(lengths, angles, num_atoms)
        loc, scale = self.length_loc_scale(num_atoms, dtype=lengths.dtype)
        encoded_lengths = (torch.log(lengths) - loc) / scale
        tan_angles = torch.tan(torch.deg2rad(angles.to(lengths.dtype)) - math.pi / 2.0)
        encoded_angles = (tan_angles - self.stats.angle_loc) / self.stats.angle_scale
        return torch.cat([encoded_lengths, encoded_angles], dim=-1)

    def decode(self, lattice_params: Tensor, num_atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised ``lattice_params [B, 6]`` -> ``lengths [B, 3]`` (Å), ``angles [B, 3]`` (°).

        Exact inverse of :meth:`encode`; any real input gives positive lengths and angles in
        (0°, 180°) (arctan).
        """
        if lattice_params.ndim != 2 or lattice_params.shape[-1] != 6:
            raise ValueError(
                f"lattice_params must have shape [B, 6], got {tuple(lattice_params.shape)}"
            )
        if num_atoms.shape != lattice_params.shape[:1]:
            raise ValueError(
                f"num_atoms has shape {tuple(num_atoms.shape)}, expected [{len(lattice_params)}]"
            )
        loc, scale = self.length_loc_scale(num_atoms, dtype=lattice_params.dtype)
        lengths = torch.exp(lattice_params[:, :3] * scale + loc)
        tan_angles = lattice_params[:, 3:] * self.stats.angle_scale + self.stats.angle_loc
        angles = torch.rad2deg(torch.arctan(tan_angles) + math.pi / 2.0)
        return lengths, angles


def _check_pair(lengths: Tensor, angles: Tensor, num_atoms: Tensor) -> None:
    if lengths.ndim != 2 or lengths.shape[-1] != 3 or angles.shape != lengths.shape:
        raise ValueError(
            f"lengths and angles must both have shape [B, 3], got {tuple(lengths.shape)} and "
            f"{tuple(angles.shape)}"
        )
    if num_atoms.shape != lengths.shape[:1]:
        raise ValueError(f"num_atoms has shape {tuple(num_atoms.shape)}, expected [{len(lengths)}]")


def lattice_matrix(lengths: Tensor, angles: Tensor) -> Tensor:
    """Lattice vectors as rows, pymatgen's ``Lattice.from_parameters`` convention.

    Args:
        lengths: ``[..., 3]`` a, b, c in Å.
        angles: ``[..., 3]`` alpha, beta, gamma in degrees.

    Returns:
        ``[..., 3, 3]`` with ``a = (a sin(beta), 0, a cos(beta))``,
        ``b = (-b sin(alpha) cos(gamma*), b sin(alpha) sin(gamma*), b cos(alpha))``,
        ``c = (0, 0, c)``.
    """
    radians = torch.deg2rad(angles)
    cos_alpha, cos_beta, cos_gamma = torch.cos(radians).unbind(-1)
    sin_alpha, sin_beta, _ = torch.sin(radians).unbind(-1)
    cos_gamma_star = ((cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta)).clamp(-1.0, 1.0)
    sin_gamma_star = torch.sqrt(1.0 - cos_gamma_star**2)
    a, b, c = lengths.unbind(-1)
    zero = torch.zeros_like(a)
    vector_a = torch.stack([a * sin_beta, zero, a * cos_beta], dim=-1)
    vector_b = torch.stack(
        [-b * sin_alpha * cos_gamma_star, b * sin_alpha * sin_gamma_star, b * cos_alpha], dim=-1
    )
    vector_c = torch.stack([zero, zero, c], dim=-1)
    return torch.stack([vector_a, vector_b, vector_c], dim=-2)


def lattice_params_from_matrix(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``matrix [..., 3, 3]`` -> ``lengths [..., 3]`` (Å), ``angles [..., 3]`` (°)."""
    lengths = torch.linalg.vector_norm(matrix, dim=-1)
    a, b, c = matrix.unbind(-2)
    len_a, len_b, len_c = lengths.unbind(-1)

    def angle(u: Tensor, v: Tensor, len_u: Tensor, len_v: Tensor) -> Tensor:
        cos = ((u * v).sum(-1) / (len_u * len_v)).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.arccos(cos))

    angles = torch.stack(
        [angle(b, c, len_b, len_c), angle(a, c, len_a, len_c), angle(a, b, len_a, len_b)], dim=-1
    )
    return lengths, angles

"""The graph a forward pass of :class:`~kldm_cli.nn.cspnet.CSPNet` works on: periodic Fourier
features of fractional-coordinate differences, the pairing of edges ``(i, j)``/``(j, i)``, the
state-independent bookkeeping of a batch (:class:`EdgeGraph`, built once per batch) and the
per-forward edge inputs (:class:`EdgeContext`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def periodic_fourier_features(frac_diff: Tensor, num_freqs: int) -> Tensor:
    """Periodic features of fractional-coordinate differences: ``[E, 3] -> [E, 6 * num_freqs]``.

    ``[sin(2π k Δf_d), cos(2π k Δf_d)]`` for ``k = 0 .. num_freqs - 1`` and the three axes
    ``d``; the sin block comes first, each block is ordered axis-major (``d * num_freqs + k``).
    Periodic with period 1 in each ``Δf_d``, so integer lattice translations drop out.
    """
    frequencies = (2.0 * math.pi) * torch.arange(
        num_freqs, dtype=frac_diff.dtype, device=frac_diff.device
    )
    angles = (frac_diff.unsqueeze(-1) * frequencies).reshape(frac_diff.shape[0], 3 * num_freqs)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def segment_mean(values: Tensor, index: Tensor, inverse_count: Tensor, size: int) -> Tensor:
    """Mean of ``values [M, D]`` over segments ``index [M]`` -> ``[size, D]``.

    ``inverse_count [size, 1]`` is ``1 / max(count, 1)`` (empty segments give 0).
    """
    total = values.new_zeros(size, values.shape[-1]).index_add_(0, index, values)
    return total * inverse_count


def plain_inference(tensor: Tensor) -> bool:
    """No autograd and no autocast: the ``out=`` fast paths apply (autocast skips ``out=`` ops,
    autograd cannot differentiate them)."""
    return not torch.is_grad_enabled() and not torch.is_autocast_enabled(tensor.device.type)


def inverse_count(index: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """``1 / max(count, 1)`` for each value ``0 .. size - 1`` of ``index [M]`` -> ``[size, 1]``."""
    count = torch.zeros(size, dtype=dtype, device=index.device)
    count.index_add_(0, index, torch.ones(index.shape[0], dtype=dtype, device=index.device))
    return count.clamp_min(1.0).reciprocal().unsqueeze(-1)


def nonzero_fourier_features(frac_diff: Tensor, num_freqs: int) -> tuple[Tensor, Tensor]:
    """The ``k >= 1`` columns of :func:`periodic_fourier_features`, sin and cos apart.

    ``[E, 3] -> ([E, 3 (num_freqs - 1)], [E, 3 (num_freqs - 1)])``, axis-major
    (``d * (num_freqs - 1) + k - 1``). The ``k = 0`` columns are constant (0 and 1).
    """
    frequencies = (2.0 * math.pi) * torch.arange(
        1, num_freqs, dtype=frac_diff.dtype, device=frac_diff.device
    )
    angles = (frac_diff.unsqueeze(-1) * frequencies).reshape(
        frac_diff.shape[0], 3 * (num_freqs - 1)
    )
    return angles.sin(), angles.cos()


def pair_edges(edge_index: Tensor, num_atoms: int) -> tuple[Tensor, Tensor, int]:
    """Reorder edges so that every edge sits ``P`` places after its reverse.

    Args:
        edge_index: ``[2, E]`` long, ``(receiver, sender)`` pairs.
        num_atoms: ``N``, the number of atoms (a bound on the atom indices).

    Returns:
        ``(receivers [E], senders [E], P)``: when every edge ``(i, j)`` has exactly one reverse
        ``(j, i)`` (no self-loops, no duplicates), the first ``P = E / 2`` edges have
        ``i < j`` and edge ``P + k`` is the reverse of edge ``k``. Otherwise the edges keep their
        order and ``P = 0``. Synchronises with the device once (call it once per batch).
    """
    receivers, senders = edge_index[0], edge_index[1]
    num_edges = receivers.shape[0]
    if num_edges == 0 or num_edges % 2:
        return receivers, senders, 0
    key = receivers * num_atoms + senders
    sorted_key, order = torch.sort(key)
    reverse_key = senders * num_atoms + receivers
    position = torch.searchsorted(sorted_key, reverse_key).clamp_max(num_edges - 1)
    paired = (
        bool((sorted_key[position] == reverse_key).all())
        and not bool((sorted_key[1:] == sorted_key[:-1]).any())
        and not bool((receivers == senders).any())
    )
    if not paired:
        return receivers, senders, 0
    forward = torch.nonzero(receivers < senders).squeeze(1)
    order = torch.cat([forward, order[position[forward]]])
    return receivers[order], senders[order], forward.shape[0]


@dataclass(frozen=True)
class EdgeGraph:
    """State-independent bookkeeping of one batch's graph (the fused path's edge order).

    It depends only on ``edge_index``, ``batch_index`` and ``num_crystals`` (not on coordinates,
    velocities, lattice or time), so a sampler builds it once per batch and passes it to every
    network evaluation. Build it with :meth:`build`.

    Attributes:
        receivers: ``[E]`` atom ``i`` of each edge, in the paired order of :func:`pair_edges`.
        senders: ``[E]`` atom ``j`` of each edge, same order.
        num_pairs: ``P``; ``2 P = E`` when the graph is symmetric, 0 otherwise.
        inverse_degree: ``[N, 1]`` ``1 / max(in-degree, 1)``.
        inverse_atoms: ``[B, 1]`` ``1 / max(atoms in crystal, 1)``.
        bag_index: ``[E, 4]`` (paired graphs) rows of the table ``[receiver terms [N];
            sender terms [N]; cos terms [P]; sin terms [P]]`` that sum to each edge's first-layer
            pre-activation: ``(i, N + j, 2N + k, 2N + P + k)`` with ``k`` the edge's pair.
        bag_weights: ``[E, 4]`` the matching signs ``(1, 1, 1, ±1)`` (``-1``: reversed edge).
    """

    receivers: Tensor
    senders: Tensor
    num_pairs: int
    inverse_degree: Tensor
    inverse_atoms: Tensor
    bag_index: Tensor | None = None
    bag_weights: Tensor | None = None

    @classmethod
    def build(
        cls,
        edge_index: Tensor,
        batch_index: Tensor,
        num_crystals: int,
        dtype: torch.dtype = torch.float32,
    ) -> EdgeGraph:
        """The graph of ``edge_index [2, E]`` over atoms ``batch_index [N]`` of ``B`` crystals;
        ``dtype`` is the network's floating dtype."""
        num_atoms = batch_index.shape[0]
        receivers, senders, num_pairs = pair_edges(edge_index, num_atoms)
        bag_index = bag_weights = None
        if num_pairs:
            pair = torch.arange(num_pairs, device=receivers.device).repeat(2)
            offset = 2 * num_atoms
            bag_index = torch.stack(
                [receivers, senders + num_atoms, pair + offset, pair + offset + num_pairs], dim=1
            )
            bag_weights = torch.ones(bag_index.shape, dtype=dtype, device=receivers.device)
            bag_weights[num_pairs:, 3] = -1.0
        return cls(
            receivers=receivers,
            senders=senders,
            num_pairs=num_pairs,
            inverse_degree=inverse_count(edge_index[0], num_atoms, dtype),
            inverse_atoms=inverse_count(batch_index, num_crystals, dtype),
            bag_index=bag_index,
            bag_weights=bag_weights,
        )


@dataclass
class EdgeContext:
    """Per-forward quantities shared by all layers (computed once).

    Attributes:
        graph: the state-independent bookkeeping (fused path edge order).
        edge_index: ``[2, E]`` the edges as given (reference path).
        batch_index: ``[N]`` crystal of each atom.
        velocity: ``[N, 3]`` atom velocities.
        lattice_params: ``[B, 6]`` lattice numbers.
        frac_diff: ``[E, 3]`` ``f_j - f_i`` in the given edge order (reference path only).
        fourier_sin: ``[P or E, 3 (num_freqs - 1)]`` ``sin(2π k Δf_d)``, ``k >= 1``, for the
            first ``P`` edges of the paired order (every edge if unpaired); fused path only.
        fourier_cos: same shape, cosines.
    """

    graph: EdgeGraph
    edge_index: Tensor
    batch_index: Tensor
    velocity: Tensor
    lattice_params: Tensor
    frac_diff: Tensor | None = None
    fourier_sin: Tensor | None = None
    fourier_cos: Tensor | None = None

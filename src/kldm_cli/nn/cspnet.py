"""Invariant message-passing network for KLDM (CSPNet-style, as the reference ``CSPVNet``).

The network maps a noisy crystal (fractional coordinates, velocities, the six lattice numbers and
per-atom features) at diffusion time ``t01`` to

* a velocity-space prediction per atom, ``[N, 3]``, mean-free per crystal,
* a lattice prediction per crystal, ``[B, 6]``,
* optionally a per-atom type prediction, ``[N, type_output_dim]`` (de novo generation).

Inputs enter only through invariant quantities: the lattice as lengths/angles (invariant to
rotation), fractional-coordinate *differences* through periodic sin/cos features (invariant to a
common shift and to integer lattice translations of any atom), and velocity *differences* (invariant
to a common velocity). Messages are averaged over a node's incoming edges, so the output permutes
with the atoms.

Edge convention: ``edge_index[0]`` is the receiving atom ``i``, ``edge_index[1]`` the sending
atom ``j``; the message of edge ``(i, j)`` is built from ``h_i, h_j``, the lattice numbers of the
crystal, ``v_j - v_i`` and ``f_j - f_i``, and is averaged into atom ``i``. Edges must stay inside
a crystal (the usual graph is fully connected within each crystal, without self-loops).

Two forward formulations share the same parameters (and hence ``state_dict``):

* ``fused=True`` (default): the first edge-MLP layer, a linear map of the concatenated edge input
  ``[h_i, h_j, lattice, W_v (v_j - v_i) + b_v, fourier(f_j - f_i)]``, is split by blocks. The
  ``h_i``/``h_j`` blocks are applied once per *atom*, the lattice block once per *crystal*, and the
  velocity projection is folded into the first layer (it is linear, so its edge term is a
  difference of per-atom terms). Only the Fourier block is an edge-sized matrix product, and it is
  evaluated once per *unordered* pair of atoms: ``sin`` is odd and ``cos`` even in ``Δf``, so the
  edge ``(j, i)`` reuses the two products of edge ``(i, j)`` with the sign of the sine part
  flipped; the ``k = 0`` features (``sin 0 = 0``, ``cos 0 = 1``) are dropped and folded into the
  bias. The Fourier features are computed once per forward pass and reused by every layer, and the
  state-independent graph bookkeeping (edge pairing, in-degrees, atoms per crystal) can be built
  once per batch with :meth:`EdgeGraph.build` and passed to every forward pass (the samplers do).
* ``fused=False``: the reference formulation (concatenate per edge, one linear layer, Fourier
  features recomputed in every layer), kept for benchmarks and as the test oracle.

Both compute the same function up to floating-point rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kldm_cli.config import NetworkConfig
from kldm_cli.nn.graph import (
    EdgeContext,
    EdgeGraph,
    nonzero_fourier_features,
    pair_edges,
    periodic_fourier_features,
    plain_inference,
    segment_mean,
)

__all__ = ["CSPNet", "EdgeGraph", "NetworkOutput", "pair_edges", "periodic_fourier_features"]

#: Width of the lattice input: three (normalised) lengths and three (normalised) angles.
LATTICE_DIM = 6


@dataclass
class NetworkOutput:
    """What :class:`CSPNet` predicts.

    Attributes:
        velocity: ``[N, 3]`` per-atom vector in fractional units, mean-free per crystal.
        lattice: ``[B, 6]`` per-crystal lattice prediction.
        types: ``[N, type_output_dim]`` per-atom type prediction, or ``None`` when the network
            has no type head (``type_output_dim == 0``, crystal structure prediction).
    """

    velocity: Tensor
    lattice: Tensor
    types: Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Time embedding (edge features and graph bookkeeping: kldm_cli.nn.graph)
# ---------------------------------------------------------------------------------------------


class RandomFourierTimeEmbedding(nn.Module):
    """Random Fourier features of the diffusion time: ``t01 [B] -> [B, time_dim]``.

    ``[cos(2π w t01), sin(2π w t01)]`` with ``time_dim / 2`` frequencies ``w ~ N(0, 1)`` drawn
    once at construction and stored as a buffer (saved with the weights, never trained).
    """

    def __init__(self, time_dim: int) -> None:
        super().__init__()
        if time_dim <= 0 or time_dim % 2 != 0:
            raise ValueError(f"time_dim must be a positive even number, got {time_dim}")
        self.register_buffer("frequencies", torch.randn(time_dim // 2))

    def forward(self, t01: Tensor) -> Tensor:
        """``t01 [B]`` -> ``[B, time_dim]``."""
        angles = (2.0 * math.pi) * t01.unsqueeze(-1) * self.frequencies
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


# ---------------------------------------------------------------------------------------------
# Message-passing layer
# ---------------------------------------------------------------------------------------------


class CSPLayer(nn.Module):
    """One message-passing layer (pre-LayerNorm, residual).

    ``h <- h + node_mlp([h', mean_j edge_mlp([h'_i, h'_j, L, P (v_j - v_i), fourier(f_j - f_i)])])``
    with ``h' = LayerNorm(h)`` (identity without layer norm) and ``P`` a linear projection of the
    velocity difference to the width of the Fourier features.
    """

    def __init__(self, hidden_dim: int, num_freqs: int, layer_norm: bool) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        fourier_dim = 6 * num_freqs
        #: Column blocks of the first edge linear layer, in concatenation order.
        self.edge_input_sizes = (hidden_dim, hidden_dim, LATTICE_DIM, fourier_dim, fourier_dim)
        self.norm = nn.LayerNorm(hidden_dim) if layer_norm else nn.Identity()
        self.velocity_proj = nn.Linear(3, fourier_dim)
        self.edge_mlp = nn.Sequential(
            nn.Linear(sum(self.edge_input_sizes), hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
        )

    def forward(self, node_states: Tensor, context: EdgeContext, fused: bool = True) -> Tensor:
        """``node_states [N, hidden] -> [N, hidden]``."""
        normed = self.norm(node_states)
        if fused:
            messages = self._messages_fused(normed, context)
            aggregated = segment_mean(
                messages, context.graph.receivers, context.graph.inverse_degree, normed.shape[0]
            )
        else:
            pre_activation = self._first_edge_linear_reference(normed, context)
            messages = self.edge_mlp[1:](pre_activation)
            aggregated = self._aggregate_reference(messages, normed, context)
        return node_states + self.node_mlp(torch.cat([normed, aggregated], dim=-1))

    def _messages_fused(self, normed: Tensor, context: EdgeContext) -> Tensor:
        """The edge MLP on the fused first layer -> ``[E, hidden]`` in the graph's edge order.

        Without autograd (sampling) the activations are applied in place, which spares two
        edge-sized allocations per layer.
        """
        in_place = not torch.is_grad_enabled()
        hidden = F.silu(self._first_edge_linear_fused(normed, context), inplace=in_place)
        second = self.edge_mlp[2]
        return F.silu(F.linear(hidden, second.weight, second.bias), inplace=in_place)

    def _fused_weights(self) -> tuple[Tensor, ...]:
        """Blocks of the first edge layer for the fused path (cheap: parameter-sized).

        Returns ``(w_recv, w_send, w_lattice, crystal_bias, velocity_weight, w_sin, w_cos)``
        where ``w_sin`` / ``w_cos`` are the Fourier columns with ``k >= 1``, and
        ``crystal_bias = b + W_v c + Σ_d W_cos[:, d, k=0]`` collects every constant term.
        """
        first = self.edge_mlp[0]
        hidden = first.weight.shape[0]
        w_recv, w_send, w_lattice, w_velocity, w_fourier = torch.split(
            first.weight, self.edge_input_sizes, dim=1
        )
        w_sin, w_cos = w_fourier.reshape(hidden, 2, 3, self.num_freqs).unbind(1)
        nonzero = 3 * (self.num_freqs - 1)
        velocity_weight = w_velocity @ self.velocity_proj.weight  # [hidden, 3]
        crystal_bias = first.bias + w_velocity @ self.velocity_proj.bias + w_cos[:, :, 0].sum(1)
        return (
            w_recv, w_send, w_lattice, crystal_bias, velocity_weight,
            w_sin[:, :, 1:].reshape(hidden, nonzero), w_cos[:, :, 1:].reshape(hidden, nonzero),
        )  # fmt: skip

    def _first_edge_linear_fused(self, normed: Tensor, context: EdgeContext) -> Tensor:
        """First edge linear layer, split by input blocks -> ``[E, hidden]``.

        With ``W = [W_i, W_j, W_L, W_v, W_f]`` and bias ``b``, and the velocity projection
        ``P v + c``, the edge pre-activation is

        ``(W_i h_i - Q v_i + (W_L L + W_v c + b)[crystal]) + (W_j h_j + Q v_j) + W_f fourier``

        with ``Q = W_v P``: two per-atom terms gathered per edge plus the Fourier term
        ``W_cos cos(2πkΔf) + W_sin sin(2πkΔf)``. For a paired graph the two products are taken
        once per unordered pair ``k < P`` and edge ``P + k`` (the reverse, ``-Δf``) gets
        ``W_cos cos - W_sin sin``.
        """
        graph = context.graph
        w_recv, w_send, w_lattice, crystal_bias, velocity_weight, w_sin, w_cos = (
            self._fused_weights()
        )
        per_crystal = F.linear(context.lattice_params, w_lattice, crystal_bias)  # [B, hidden]
        per_atom_velocity = F.linear(context.velocity, velocity_weight)  # [N, hidden]
        receiver_bias = per_crystal.index_select(0, context.batch_index) - per_atom_velocity
        assert context.fourier_sin is not None and context.fourier_cos is not None
        if graph.bag_index is not None and plain_inference(normed):
            # Inference: write the four kinds of terms into one table and sum each edge's four
            # rows with one embedding_bag (one pass over the edges instead of five).
            num_atoms, num_pairs = normed.shape[0], graph.num_pairs
            table = normed.new_empty(2 * (num_atoms + num_pairs), w_recv.shape[0])
            receivers, senders, cosines, sines = table.split(
                [num_atoms, num_atoms, num_pairs, num_pairs]
            )
            torch.addmm(receiver_bias, normed, w_recv.t(), out=receivers)
            torch.addmm(per_atom_velocity, normed, w_send.t(), out=senders)
            torch.mm(context.fourier_cos, w_cos.t(), out=cosines)
            torch.mm(context.fourier_sin, w_sin.t(), out=sines)
            return F.embedding_bag(
                graph.bag_index, table, mode="sum", per_sample_weights=graph.bag_weights
            )
        receiver_part = torch.addmm(receiver_bias, normed, w_recv.t())
        sender_part = torch.addmm(per_atom_velocity, normed, w_send.t())
        pre_activation = receiver_part.index_select(0, graph.receivers)
        pre_activation += sender_part.index_select(0, graph.senders)
        if graph.num_pairs == 0:
            pre_activation += torch.mm(context.fourier_sin, w_sin.t())
            pre_activation += torch.mm(context.fourier_cos, w_cos.t())
            return pre_activation
        # Out of place: in-place updates of the two halves (views) would make autograd copy
        # the whole edge-sized gradient per half (CopySlices), ~15 % of a training step on CPU.
        cosine = torch.mm(context.fourier_cos, w_cos.t())
        sine = torch.mm(context.fourier_sin, w_sin.t())
        return pre_activation + torch.cat([cosine + sine, cosine - sine])

    def _first_edge_linear_reference(self, normed: Tensor, context: EdgeContext) -> Tensor:
        """First edge linear layer on the concatenated per-edge input -> ``[E, hidden]``."""
        receivers, senders = context.edge_index[0], context.edge_index[1]
        velocity_diff = context.velocity[senders] - context.velocity[receivers]
        assert context.frac_diff is not None
        edge_input = torch.cat(
            [
                normed[receivers],
                normed[senders],
                context.lattice_params[context.batch_index[receivers]],
                self.velocity_proj(velocity_diff),
                periodic_fourier_features(context.frac_diff, self.num_freqs),
            ],
            dim=-1,
        )
        return self.edge_mlp[0](edge_input)

    @staticmethod
    def _aggregate_reference(messages: Tensor, normed: Tensor, context: EdgeContext) -> Tensor:
        """Mean of ``messages [E, hidden]`` over each atom's incoming edges -> ``[N, hidden]``."""
        num_atoms = normed.shape[0]
        index = context.edge_index[0].unsqueeze(-1).expand_as(messages)
        return messages.new_zeros(num_atoms, messages.shape[-1]).scatter_reduce_(
            0, index, messages, reduce="mean", include_self=False
        )


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class CSPNet(nn.Module):
    """CSPNet-style invariant network predicting velocity, lattice and (optionally) types.

    Args:
        config: architecture (:class:`~kldm_cli.config.NetworkConfig`).
        fused: use the fused edge computation (default). ``False`` selects the reference
            formulation; both have the same parameters and compute the same function.
    """

    def __init__(self, config: NetworkConfig, *, fused: bool = True) -> None:
        super().__init__()
        _check_config(config)
        self.config = config
        self.fused = fused
        hidden = config.hidden_dim
        self.node_embedding = nn.Linear(config.node_input_dim, hidden, bias=False)
        self.time_embedding = RandomFourierTimeEmbedding(config.time_dim)
        self.atom_latent = nn.Linear(hidden + config.time_dim, hidden)
        self.layers = nn.ModuleList(
            CSPLayer(hidden, config.num_freqs, config.layer_norm) for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden) if config.layer_norm else nn.Identity()
        self.velocity_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3, bias=False)
        )
        self.lattice_head = nn.Linear(hidden, LATTICE_DIM, bias=False)
        self.type_head = (
            nn.Linear(hidden, config.type_output_dim) if config.type_output_dim > 0 else None
        )

    def forward(
        self,
        t01: Tensor,
        node_features: Tensor,
        frac_coords: Tensor,
        velocity: Tensor,
        lattice_params: Tensor,
        batch_index: Tensor,
        edge_index: Tensor,
        num_crystals: int,
        graph: EdgeGraph | None = None,
    ) -> NetworkOutput:
        """Predict velocity, lattice and types for a batch of ``B`` crystals with ``N`` atoms.

        Args:
            t01: ``[B]`` diffusion time in ``[0, 1]``.
            node_features: ``[N, node_input_dim]`` (one-hot elements for CSP, noisy types for DNG).
            frac_coords: ``[N, 3]`` fractional coordinates in ``[0, 1)``.
            velocity: ``[N, 3]`` velocities in fractional units.
            lattice_params: ``[B, 6]`` lattice numbers (normalised lengths and angles).
            batch_index: ``[N]`` long, crystal of each atom.
            edge_index: ``[2, E]`` long, ``(receiver i, sender j)`` pairs within a crystal.
            num_crystals: ``B``.
            graph: the batch's :class:`EdgeGraph` (built from ``edge_index``, ``batch_index``
                and ``num_crystals``), to skip rebuilding it; built here when ``None``.

        Returns:
            :class:`NetworkOutput` with ``velocity [N, 3]`` (mean-free per crystal),
            ``lattice [B, 6]`` and ``types [N, type_output_dim]`` or ``None``.
        """
        inputs = dict(
            t01=t01, node_features=node_features, frac_coords=frac_coords, velocity=velocity,
            lattice_params=lattice_params, batch_index=batch_index, edge_index=edge_index,
        )  # fmt: skip
        _check_inputs(self.config, num_crystals, inputs)
        if graph is None:
            graph = EdgeGraph.build(edge_index, batch_index, num_crystals, frac_coords.dtype)
        elif graph.receivers.shape[0] != edge_index.shape[1]:
            raise ValueError(
                f"graph has {graph.receivers.shape[0]} edges but edge_index has "
                f"{edge_index.shape[1]}; build the EdgeGraph from this batch"
            )
        context = self._edge_context(
            frac_coords, velocity, lattice_params, batch_index, edge_index, graph
        )

        node_states = self._initial_node_states(t01, node_features, batch_index)
        for layer in self.layers:
            node_states = layer(node_states, context, fused=self.fused)
        node_states = self.final_norm(node_states)

        inverse_atoms = graph.inverse_atoms.to(node_states.dtype)
        velocity_out = self.velocity_head(node_states)
        velocity_out = velocity_out - segment_mean(
            velocity_out, batch_index, inverse_atoms, num_crystals
        ).index_select(0, batch_index)
        crystal_states = segment_mean(node_states, batch_index, inverse_atoms, num_crystals)
        lattice_out = self.lattice_head(crystal_states)
        types_out = self.type_head(node_states) if self.type_head is not None else None
        return NetworkOutput(velocity=velocity_out, lattice=lattice_out, types=types_out)

    def _initial_node_states(
        self, t01: Tensor, node_features: Tensor, batch_index: Tensor
    ) -> Tensor:
        """Embed atom features and diffusion time -> ``[N, hidden]``."""
        time_features = self.time_embedding(t01)[batch_index]  # [N, time_dim]
        embedded = self.node_embedding(node_features)  # [N, hidden]
        return self.atom_latent(torch.cat([embedded, time_features], dim=-1))

    def _edge_context(
        self,
        frac_coords: Tensor,
        velocity: Tensor,
        lattice_params: Tensor,
        batch_index: Tensor,
        edge_index: Tensor,
        graph: EdgeGraph,
    ) -> EdgeContext:
        """Layer-independent edge quantities, computed once per forward pass."""
        context = EdgeContext(
            graph=graph,
            edge_index=edge_index,
            batch_index=batch_index,
            velocity=velocity,
            lattice_params=lattice_params,
        )
        if not self.fused:
            context.frac_diff = frac_coords[edge_index[1]] - frac_coords[edge_index[0]]
            return context
        # Fourier features of the first P edges (one per unordered pair), or of every edge.
        count = graph.num_pairs or graph.receivers.shape[0]
        frac_diff = frac_coords.index_select(0, graph.senders[:count]) - frac_coords.index_select(
            0, graph.receivers[:count]
        )
        context.fourier_sin, context.fourier_cos = nonzero_fourier_features(
            frac_diff, self.config.num_freqs
        )
        return context


def _check_config(config: NetworkConfig) -> None:
    for name in ("hidden_dim", "num_layers", "num_freqs", "time_dim", "node_input_dim"):
        value = getattr(config, name)
        if value <= 0:
            raise ValueError(f"NetworkConfig.{name} must be positive, got {value}")
    if config.time_dim % 2 != 0:
        raise ValueError(f"NetworkConfig.time_dim must be even, got {config.time_dim}")
    if config.type_output_dim < 0:
        raise ValueError(
            f"NetworkConfig.type_output_dim must be >= 0, got {config.type_output_dim}"
        )


def _check_inputs(config: NetworkConfig, num_crystals: int, inputs: dict[str, Tensor]) -> None:
    """Raise ``ValueError`` naming the offending shape of the network ``inputs`` (the arguments
    of :meth:`CSPNet.forward` by name); cheap (no device synchronisation)."""
    num_atoms = inputs["node_features"].shape[0]
    expected = {
        "t01": (num_crystals,),
        "node_features": (num_atoms, config.node_input_dim),
        "frac_coords": (num_atoms, 3),
        "velocity": (num_atoms, 3),
        "lattice_params": (num_crystals, LATTICE_DIM),
        "batch_index": (num_atoms,),
    }
    for name, shape in expected.items():
        if tuple(inputs[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(inputs[name].shape)}, expected {shape}")
    edge_index = inputs["edge_index"]
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index has shape {tuple(edge_index.shape)}, expected (2, E)")
    for name in ("batch_index", "edge_index"):
        if inputs[name].dtype != torch.long:
            raise ValueError(f"{name} must be torch.long, got {inputs[name].dtype}")

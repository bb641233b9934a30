"""The KLDM model: the network plus the diffusion processes of each modality.

:class:`KLDM` ties together, for one :class:`~kldm_cli.config.KLDMConfig`:

- fractional coordinates: kinetic Langevin diffusion (:mod:`kldm_cli.diffusion.kinetic_langevin`);
- lattice: VP-SDE on the 6 normalized lattice numbers (:mod:`kldm_cli.diffusion.vp_sde`);
- atom types (DNG only): one-hot, analog-bit or masking diffusion
  (:mod:`kldm_cli.diffusion.atom_types`);
- the invariant network (:mod:`kldm_cli.nn`), which knows nothing about the processes.

The processes never see the network and vice versa; this module is where they meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kldm_cli.config import KLDMConfig
from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.lattice import LatticeTransform
from kldm_cli.diffusion.atom_types import AtomTypeProcess, make_type_process
from kldm_cli.diffusion.kinetic_langevin import KineticLangevin
from kldm_cli.diffusion.reverse import ReverseProcess
from kldm_cli.diffusion.vp_sde import VPSDE
from kldm_cli.nn import CSPNet, NetworkOutput
from kldm_cli.nn.cspnet import EdgeGraph


@dataclass
class Losses:
    """Training losses of one batch (scalars)."""

    total: Tensor
    velocity: Tensor
    lattice: Tensor
    types: Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        values = {"loss": self.total, "loss_v": self.velocity, "loss_l": self.lattice}
        if self.types is not None:
            values["loss_a"] = self.types
        return {name: float(value.detach()) for name, value in values.items()}


@dataclass
class SampleState:
    """The noisy state x_t = (f_t, v_t, l_t, a_t) of a batch during reverse sampling."""

    frac_coords: Tensor  # [N, 3] in [0, 1)
    velocity: Tensor  # [N, 3] fractional units
    lattice_params: Tensor  # [B, 6] normalized lattice numbers
    type_state: Tensor | None  # [N, state_dim] (DNG) or None (CSP: types are given)


class KLDM(torch.nn.Module):
    """Network + processes for CSP (``task="csp"``) or DNG (``task="dng"``)."""

    def __init__(self, config: KLDMConfig) -> None:
        super().__init__()
        self.config = config
        self.network = CSPNet(config.network)
        self.positions = KineticLangevin(config.positions)
        self.lattice = VPSDE(config.lattice)
        self.types: AtomTypeProcess | None = None
        if config.task == "dng":
            if config.types is None:
                raise ValueError("a DNG model needs a TypeDiffusionConfig (config.types)")
            self.types = make_type_process(config.types, num_classes=len(config.elements))
        self.lattice_transform = LatticeTransform(config.lattice_stats)
        lookup = torch.full((max(config.elements) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(config.elements)] = torch.arange(len(config.elements))
        self.register_buffer("_element_index", lookup, persistent=False)
        self.register_buffer("_elements", torch.tensor(config.elements), persistent=False)

    # ------------------------------------------------------------------ vocabulary
    @property
    def num_classes(self) -> int:
        return len(self.config.elements)

    def element_index(self, atomic_numbers: Tensor) -> Tensor:
        """Map atomic numbers [N] to vocabulary indices [N]; raises for unknown elements."""
        if atomic_numbers.numel() and int(atomic_numbers.max()) >= len(self._element_index):
            unknown = atomic_numbers[atomic_numbers >= len(self._element_index)]
            raise ValueError(f"elements unknown to this model: Z={sorted(set(unknown.tolist()))}")
        index = self._element_index[atomic_numbers]
        if (index < 0).any():
            unknown = sorted(set(atomic_numbers[index < 0].tolist()))
            raise ValueError(f"elements unknown to this model: Z={unknown}")
        return index

    def atomic_numbers(self, type_index: Tensor) -> Tensor:
        """Map vocabulary indices [N] back to atomic numbers [N]."""
        return self._elements[type_index]

    def node_features(self, type_index: Tensor | None, type_state: Tensor | None) -> Tensor:
        """Per-atom network input: one-hot elements (CSP) or the noisy type state (DNG)."""
        if self.types is None:
            return F.one_hot(type_index, self.num_classes).to(self.network_dtype)
        return self.types.network_input(type_state).to(self.network_dtype)

    @property
    def network_dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    # ------------------------------------------------------------------ processes
    def processes(self) -> dict[str, ReverseProcess]:
        """The processes the sampler steps, by name, in the order they draw random numbers:
        ``positions`` (state ``(frac_coords, velocity)``), ``lattice`` and, DNG only, ``types``."""
        processes: dict[str, ReverseProcess] = {
            "positions": self.positions,
            "lattice": self.lattice,
        }
        if self.types is not None:
            processes["types"] = self.types
        return processes

    def process_states(self, state: SampleState) -> dict[str, Any]:
        """:class:`SampleState` → the state of each process of :meth:`processes`."""
        states: dict[str, Any] = {
            "positions": (state.frac_coords, state.velocity),
            "lattice": state.lattice_params,
        }
        if self.types is not None:
            states["types"] = state.type_state
        return states

    @staticmethod
    def sample_state(states: dict[str, Any]) -> SampleState:
        """Inverse of :meth:`process_states`."""
        frac_coords, velocity = states["positions"]
        return SampleState(frac_coords, velocity, states["lattice"], states.get("types"))

    @staticmethod
    def process_predictions(out: NetworkOutput) -> dict[str, Tensor]:
        """The network's heads by process name (the ``prediction`` of each reverse step)."""
        predictions = {"positions": out.velocity, "lattice": out.lattice}
        if out.types is not None:
            predictions["types"] = out.types
        return predictions

    # ------------------------------------------------------------------ network
    def predict(
        self,
        t01: Tensor,
        state: SampleState,
        type_index: Tensor | None,
        batch_index: Tensor,
        edge_index: Tensor,
        num_crystals: int,
        *,
        node_features: Tensor | None = None,
        graph: EdgeGraph | None = None,
    ) -> NetworkOutput:
        """One network evaluation on the noisy state at time ``t01`` [B] — the only place the
        network is called, in training and in sampling.

        ``node_features`` and ``graph`` may be given when they are fixed for a whole run (the
        sampler prepares them once per batch).
        """
        if node_features is None:
            node_features = self.node_features(type_index, state.type_state)
        return self.network(
            t01=t01,
            node_features=node_features,
            frac_coords=state.frac_coords,
            velocity=state.velocity,
            lattice_params=state.lattice_params,
            batch_index=batch_index,
            edge_index=edge_index,
            num_crystals=num_crystals,
            graph=graph,
        )

    # ------------------------------------------------------------------ training
    def encode_lattice(self, batch: CrystalBatch) -> Tensor:
        """The 6 normalized lattice numbers [B, 6] of a batch."""
        return self.lattice_transform.encode(batch.lengths, batch.angles, batch.num_atoms).to(
            batch.frac_coords.dtype
        )

    def loss(
        self,
        batch: CrystalBatch,
        generator: torch.Generator | None = None,
        t01: Tensor | None = None,
    ) -> Losses:
        """Denoising losses for a batch at times ``t01 [B]``, by default drawn from U(t_min, 1].

        Fixed times (e.g. all 0.1) measure the loss at one noise level, as a diagnostic.
        """
        cfg = self.config.train
        num_crystals = batch.num_crystals
        device = batch.frac_coords.device
        if t01 is None:
            t01 = cfg.t_min + (1.0 - cfg.t_min) * torch.rand(
                num_crystals, generator=generator, device=device
            )
        elif t01.shape != (num_crystals,):
            raise ValueError(f"t01 has shape {tuple(t01.shape)}, expected ({num_crystals},)")
        frac_t, velocity_t, target_v = self.positions.sample_training(
            t01, batch.frac_coords, batch.batch_index, num_crystals, generator=generator
        )
        lattice_0 = self.encode_lattice(batch)
        lattice_t, target_l = self.lattice.sample_training(t01, lattice_0, generator=generator)
        type_index = self.element_index(batch.atomic_numbers)
        type_state, target_a = None, None
        if self.types is not None:
            type_state, target_a = self.types.sample_training(
                t01[batch.batch_index], type_index, generator=generator
            )
        state = SampleState(frac_t, velocity_t, lattice_t, type_state)
        out = self.predict(
            t01, state, type_index, batch.batch_index, batch.edge_index, num_crystals
        )
        loss_v = self.positions.loss(out.velocity, target_v)
        loss_l = self.lattice.loss(out.lattice, target_l)
        total = cfg.loss_weight_velocity * loss_v + cfg.loss_weight_lattice * loss_l
        loss_a = None
        if self.types is not None:
            loss_a = self.types.loss(out.types, target_a, t01[batch.batch_index])
            total = total + cfg.loss_weight_types * loss_a
        return Losses(total=total, velocity=loss_v, lattice=loss_l, types=loss_a)

"""Configuration dataclasses, saved as ``config.json`` beside ``model.safetensors``.

A model is always rebuilt from its config: :class:`KLDMConfig` holds everything needed
(architecture, diffusion switches, lattice statistics, element vocabulary, atom-count
distribution). Every dataclass round-trips through :func:`KLDMConfig.to_dict` /
:func:`KLDMConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Version of the config.json format. Bump when a change is not backward compatible.
CONFIG_FORMAT_VERSION = 1

Task = Literal["csp", "dng"]
TypeModality = Literal["c", "c-ab", "d"]


@dataclass(frozen=True)
class NetworkConfig:
    """CSPNet-style invariant message-passing network (see :mod:`kldm_cli.nn`).

    ``node_input_dim`` is the width of the per-atom input features: the one-hot element
    vocabulary for CSP, the noisy type state for DNG. ``type_output_dim`` is 0 for CSP
    (no type head) and the width of the type prediction for DNG.
    """

    hidden_dim: int = 512
    num_layers: int = 6
    num_freqs: int = 128
    time_dim: int = 256
    node_input_dim: int = 100
    type_output_dim: int = 0
    layer_norm: bool = True

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NetworkConfig:
        presets = {
            "paper": dict(hidden_dim=512, num_layers=6, num_freqs=128, time_dim=256),
            "medium": dict(hidden_dim=256, num_layers=4, num_freqs=64, time_dim=128),
            "small": dict(hidden_dim=128, num_layers=4, num_freqs=32, time_dim=64),
            "tiny": dict(hidden_dim=32, num_layers=2, num_freqs=8, time_dim=16),
        }
        if name not in presets:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


@dataclass(frozen=True)
class KineticLangevinConfig:
    """Kinetic Langevin diffusion of fractional coordinates (paper, "Forward process").

    Internal time runs over [0, ``t_final``]; positions are scaled by ``position_scale``
    (2π: the unit torus becomes the circle of length 2π).
    """

    t_final: float = 2.0
    position_scale: float = 6.283185307179586
    num_wrapped_images: int = 13
    #: Design choice 1: standard deviation of v0 (0 = "atoms at rest").
    initial_velocity_std: float = 0.0
    #: Design choice 2: network predicts the normalized wrapped-normal score (KLDM-eps0).
    simplified_parameterization: bool = True
    #: Design choice 3: sum_k v_k = 0 for noise, targets and network output.
    mean_free_velocity: bool = True
    num_norm_grid: int = 2000


@dataclass(frozen=True)
class LatticeDiffusionConfig:
    """VP-SDE on the 6 normalized lattice numbers, linear beta, x0 parameterisation."""

    beta_min: float = 0.1
    beta_max: float = 20.0


@dataclass(frozen=True)
class TypeDiffusionConfig:
    """Atom-type diffusion for DNG: continuous one-hot (c), analog bits (c-ab), masking (d)."""

    modality: TypeModality = "d"
    beta_min: float = 0.1
    beta_max: float = 20.0
    #: Analog-bit scale (bits are mapped to {-scale, +scale}).
    analog_bit_scale: float = 1.0


@dataclass(frozen=True)
class LatticeStats:
    """Location/scale of log lattice lengths per number of atoms, and angle loc/scale.

    ``length_loc[n]`` / ``length_scale[n]`` are 3-vectors for cells of ``n`` atoms (JSON keys
    are strings of ints).
    """

    length_loc: dict[int, list[float]] = field(default_factory=dict)
    length_scale: dict[int, list[float]] = field(default_factory=dict)
    angle_loc: float = 0.0
    angle_scale: float = 0.35

    def to_dict(self) -> dict[str, Any]:
        return {
            "length_loc": {str(k): list(v) for k, v in sorted(self.length_loc.items())},
            "length_scale": {str(k): list(v) for k, v in sorted(self.length_scale.items())},
            "angle_loc": self.angle_loc,
            "angle_scale": self.angle_scale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatticeStats:
        return cls(
            length_loc={int(k): list(v) for k, v in data["length_loc"].items()},
            length_scale={int(k): list(v) for k, v in data["length_scale"].items()},
            angle_loc=float(data.get("angle_loc", 0.0)),
            angle_scale=float(data.get("angle_scale", 0.35)),
        )


@dataclass(frozen=True)
class SamplerConfig:
    """Reverse-process sampler: ``em`` (exponential integrator) or ``pc`` (predictor-corrector)."""

    method: Literal["em", "pc"] = "pc"
    num_steps: int = 1000
    corrector_tau: float = 0.25
    #: Time grid from t01 = 1 to t_min: "uniform", or "power[:RHO]" (EDM-style, evenly spaced
    #: in t01^(1/RHO), steps shrink towards the data; "power" = "power:2"). See
    #: :func:`kldm_cli.sampling.time_grid`.
    time_grid: str = "uniform"


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 1e-3
    batch_size: int = 256
    ema_decay: float = 0.999
    ema_start: int = 500
    t_min: float = 1e-3
    grad_clip: float = 1.0
    loss_weight_velocity: float = 1.0
    loss_weight_lattice: float = 1.0
    loss_weight_types: float = 1.0
    seed: int = 42


@dataclass(frozen=True)
class KLDMConfig:
    """Everything needed to rebuild a trained model (saved as config.json)."""

    task: Task = "csp"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    positions: KineticLangevinConfig = field(default_factory=KineticLangevinConfig)
    lattice: LatticeDiffusionConfig = field(default_factory=LatticeDiffusionConfig)
    types: TypeDiffusionConfig | None = None
    lattice_stats: LatticeStats = field(default_factory=LatticeStats)
    #: Atomic numbers the model knows, in vocabulary order (index i <-> element).
    elements: list[int] = field(default_factory=lambda: list(range(1, 101)))
    #: Number of crystals per atom count in the training set (DNG samples from it).
    num_atoms_counts: dict[int, int] = field(default_factory=dict)
    max_atoms: int = 20
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: Provenance: training data hash, kldm version, anything informative.
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = CONFIG_FORMAT_VERSION

    @property
    def min_atoms(self) -> int:
        return min(self.num_atoms_counts) if self.num_atoms_counts else 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lattice_stats"] = self.lattice_stats.to_dict()
        data["num_atoms_counts"] = {str(k): v for k, v in sorted(self.num_atoms_counts.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KLDMConfig:
        version = int(data.get("format_version", 1))
        if version > CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"config format_version {version} is newer than this kldm understands "
                f"({CONFIG_FORMAT_VERSION}); upgrade kldm"
            )
        types = data.get("types")
        return cls(
            task=data["task"],
            network=NetworkConfig(**data["network"]),
            positions=KineticLangevinConfig(**data["positions"]),
            lattice=LatticeDiffusionConfig(**data["lattice"]),
            types=TypeDiffusionConfig(**types) if types else None,
            lattice_stats=LatticeStats.from_dict(data["lattice_stats"]),
            elements=[int(z) for z in data["elements"]],
            num_atoms_counts={int(k): int(v) for k, v in data["num_atoms_counts"].items()},
            max_atoms=int(data["max_atoms"]),
            sampler=SamplerConfig(**data.get("sampler", {})),
            train=TrainConfig(**data.get("train", {})),
            provenance=dict(data.get("provenance", {})),
            format_version=version,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> KLDMConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a kldm config ({err!r})") from err

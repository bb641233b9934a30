"""kldm: command-line crystal generator with Kinetic Langevin Diffusion for Materials."""

__version__ = "0.1.0"

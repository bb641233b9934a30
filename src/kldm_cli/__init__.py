"""kldm: command-line crystal generator with Kinetic Langevin Diffusion for Materials."""

from kldm_cli.threads import use_passive_openmp_wait

use_passive_openmp_wait()  # before anything loads torch (see kldm_cli.threads)

__version__ = "0.1.0"

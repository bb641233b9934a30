"""The invariant message-passing network (imports nothing from :mod:`kldm_cli.diffusion`)."""

from kldm_cli.nn.cspnet import CSPNet, NetworkOutput

__all__ = ["CSPNet", "NetworkOutput"]

"""``python -m kldm_cli``: the ``kldm`` command, e.g. under ``torchrun -m kldm_cli train ...``."""

from kldm_cli.cli.main import app

if __name__ == "__main__":
    app(prog_name="kldm")

"""Training of KLDM (CSP or DNG): resumable, one process or several (DDP), to a model folder.

``train(options)`` does, in order:

1. read the training set (cached parse) and derive what the model must remember:
   element vocabulary, lattice statistics per atom count, atom-count distribution;
2. build the :class:`~kldm_cli.model.KLDM` model from a :class:`~kldm_cli.config.KLDMConfig`
   (or reload the run's own ``config.json`` when resuming);
3. loop: t ~ U(t_min, 1], denoising losses, Adam, gradient clipping, EMA of the weights;
4. every ``checkpoint_every`` steps write ``checkpoint.safetensors`` (model, EMA, optimizer, RNG,
   position in the data order), the current EMA weights as a model folder and
   ``training_curves.png``;
5. every ``val_every`` epochs evaluate the validation loss (and, for CSP, the match rate of one
   sample per structure) on a fixed subset and keep the best EMA weights in ``best/``.

The output folder is itself a model folder (``model.safetensors`` + ``config.json`` +
``README.md``) that ``kldm predict --weights`` accepts, plus ``train_log.jsonl``.

**Multi-process (DDP).** Launched by ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` set),
each process joins a process group (NCCL on CUDA, Gloo on CPU), trains the same network wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` on a disjoint shard of every epoch's
permutation (the same permutation on all ranks, see
:func:`~kldm_cli.training.dataset.shard_order`) with its own noise generator seeded
``seed + rank``; ``--batch-size`` is per process. Only rank 0 writes files and validates.
See ``docs/training.md``.

Modules: :mod:`.options` (options, result, model config), :mod:`.dataset` (records, packing,
epoch order), :mod:`.schedule` (learning rate, EMA), :mod:`.distributed` (process group and
collectives), :mod:`.precision` (bf16), :mod:`.checkpoint`, :mod:`.log` (log and plot),
:mod:`.card` (model card), :mod:`.validation`, :mod:`.trainer` (the loop).
"""

from kldm_cli.training.card import model_card
from kldm_cli.training.checkpoint import load_checkpoint, save_checkpoint
from kldm_cli.training.distributed import DistributedInfo, distributed_from_env
from kldm_cli.training.log import plot_training_log, read_training_log
from kldm_cli.training.options import LOG_NAME, PLOT_NAME, TrainOptions, TrainResult, build_config
from kldm_cli.training.trainer import Trainer, train

__all__ = [
    "LOG_NAME",
    "PLOT_NAME",
    "DistributedInfo",
    "TrainOptions",
    "TrainResult",
    "Trainer",
    "build_config",
    "distributed_from_env",
    "load_checkpoint",
    "model_card",
    "plot_training_log",
    "read_training_log",
    "save_checkpoint",
    "train",
]

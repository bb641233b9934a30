"""Model folders, safetensors weights and the Hugging Face Hub.

A *model folder* is what ``kldm train`` writes and what a Hub model repository holds, unchanged::

    model.safetensors   the network's weights (safetensors only; nothing is ever unpickled)
    config.json         a :class:`~kldm_cli.config.KLDMConfig`; the model is rebuilt from it
    README.md           the model card: task, data, training, measured metrics, limitations

:func:`resolve_weights` turns what the user passed to ``--weights`` into such a folder: a local
path, ``hf://OWNER/REPO[@REVISION]`` (downloaded into the standard Hugging Face cache), or the name
of a release in :data:`RELEASES` (a Hub repository pinned at a revision, with an offline copy
bundled in ``weights/<name>/``). :func:`read_model_folder` reads a folder with checks that name
the offending file, and :func:`load_state_dict_strict` refuses any partial load.
:func:`push_model_folder` is the way back: it checks a model folder and uploads it to a Hub
repository in one commit, whose hash pins the ``hf://`` reference it returns.

The Hub's environment variables (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, ``HF_TOKEN``, ``HF_TOKEN_PATH``) are read each time a function here runs, not
when ``huggingface_hub`` is imported, and passed to it explicitly.

Modules: :mod:`.folders` (model folders, safetensors checks, card metadata), :mod:`.connection`
(environment, ``hf://`` references, error classification), :mod:`.download` (Hub and cache),
:mod:`.releases` (the registry, bundled copies, ``--weights`` resolution), :mod:`.push`.
"""

from __future__ import annotations

from kldm_cli.hub.connection import (
    DEFAULT_ENDPOINT,
    HF_SCHEME,
    HUB_TIMEOUT_S,
    hf_home,
    hub_cache_dir,
    hub_endpoint,
    hub_offline,
    hub_token,
    parse_hf_spec,
)
from kldm_cli.hub.download import (
    HubUnreachableError,
    Origin,
    ResolvedWeights,
    cached_snapshot,
    download_snapshot,
    fetch_hub_weights,
)
from kldm_cli.hub.folders import (
    CARD_NAME,
    CONFIG_NAME,
    MODEL_FILES,
    WEIGHTS_NAME,
    ModelLoadError,
    card_metrics,
    check_model_folder,
    load_state_dict_strict,
    read_card_metadata,
    read_model_folder,
    read_safetensors,
    write_missing_card,
    write_model_folder,
)
from kldm_cli.hub.push import (
    HubPushError,
    PushResult,
    push_model_folder,
)
from kldm_cli.hub.releases import (
    DEFAULT_RELEASES,
    RELEASES,
    SIZE_ROUTED_RELEASES,
    Release,
    ReleaseStatus,
    bundled_release_dir,
    bundled_weights_dir,
    download_weights,
    fetch_release,
    get_release,
    release_statuses,
    resolve_weights,
)

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "DEFAULT_ENDPOINT",
    "DEFAULT_RELEASES",
    "HF_SCHEME",
    "HUB_TIMEOUT_S",
    "HubPushError",
    "HubUnreachableError",
    "MODEL_FILES",
    "ModelLoadError",
    "Origin",
    "PushResult",
    "RELEASES",
    "SIZE_ROUTED_RELEASES",
    "Release",
    "ReleaseStatus",
    "ResolvedWeights",
    "WEIGHTS_NAME",
    "bundled_release_dir",
    "bundled_weights_dir",
    "cached_snapshot",
    "card_metrics",
    "check_model_folder",
    "download_snapshot",
    "download_weights",
    "fetch_hub_weights",
    "fetch_release",
    "get_release",
    "hf_home",
    "hub_cache_dir",
    "hub_endpoint",
    "hub_offline",
    "hub_token",
    "load_state_dict_strict",
    "parse_hf_spec",
    "push_model_folder",
    "read_card_metadata",
    "read_model_folder",
    "read_safetensors",
    "release_statuses",
    "resolve_weights",
    "write_missing_card",
    "write_model_folder",
]

"""Pushing a model folder to a Hub repository in one commit, whose hash pins the ``hf://``
reference returned."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kldm_cli.hub.connection import (
    COMMIT_HASH,
    HUB_TIMEOUT_S,
    hf_label,
    hub_endpoint,
    hub_offline,
    hub_token,
    is_connection_error,
    parse_hf_spec,
    short_error,
)
from kldm_cli.hub.folders import MODEL_FILES, check_model_folder, write_missing_card

#: Files of a training run that are never uploaded (resumable state, logs, plots, best/).
_RUN_FILES_NOT_PUSHED = "checkpoint.safetensors, train_log.jsonl, training_curves.png, best/"


class HubPushError(ValueError):
    """An upload to the Hub was refused or failed; the message says what the Hub now holds."""


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_model_folder` did.

    ``commit`` is the commit that holds the model folder (``unchanged``: the branch already held
    these exact files, so no new commit was made); ``reference`` is ``hf://OWNER/REPO@commit``.
    ``notices`` are one-line messages for the user (a card written, files left behind, ...).
    """

    repo_id: str
    branch: str
    commit: str
    created: bool
    unchanged: bool
    url: str
    notices: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        return hf_label(self.repo_id, self.commit)


def push_model_folder(
    folder: str | Path,
    destination: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
) -> PushResult:
    """Check a model folder and upload it to ``destination`` (``hf://OWNER/REPO``) in one commit.

    In order: the folder is checked (:func:`check_model_folder`; a missing card is written, see
    :func:`write_missing_card`), nothing is sent when that fails; the token is looked up
    (:func:`hub_token`); the repository is created if it does not exist (``private`` applies
    only then) and the branch ``revision`` (default ``main``) too; a copy of the three model
    files, checked again, is committed with huggingface_hub's ``create_commit`` on top of the
    branch head seen before. Only ``model.safetensors``, ``config.json`` and ``README.md`` are
    uploaded, never checkpoints, optimizer state or logs.

    A commit is atomic on the Hub: when the upload fails, the error says whether the branch is
    unchanged (nothing committed) or could not be checked. Raises :class:`HubPushError`.
    """
    repo_id, pinned = parse_hf_spec(destination)
    if pinned is not None:
        raise ValueError(
            f"{destination}: push to hf://{repo_id} (a branch goes in --revision); the commit "
            "to pin is printed after the upload"
        )
    if revision is not None and (not revision.strip() or COMMIT_HASH.match(revision)):
        raise ValueError(f"--revision {revision!r}: give a branch name to commit to")
    source = Path(folder)
    config = check_model_folder(source)
    notices = []
    if (card := write_missing_card(source, config)) is not None:
        notices.append(f"{card}: was missing; written from config.json and the training log")
        check_model_folder(source)
    left_behind = sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in source.iterdir()
        if entry.name not in MODEL_FILES and not entry.name.startswith(".")
    )
    if left_behind:
        notices.append(f"not uploaded (not part of a model folder): {', '.join(left_behind)}")

    token = hub_token()
    if token is None:
        raise HubPushError(
            f"{hf_label(repo_id, None)}: no Hugging Face token; set HF_TOKEN or run "
            "`hf auth login` with a token that has write access (nothing was uploaded)"
        )
    if hub_offline():
        raise HubPushError("HF_HUB_OFFLINE is set, so nothing was uploaded; unset it to push")

    from huggingface_hub import CommitOperationAdd, HfApi

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    with tempfile.TemporaryDirectory(prefix="kldm-push-") as tmp:
        staged = Path(tmp)
        for name in MODEL_FILES:  # upload exactly the bytes that were checked
            shutil.copyfile(source / name, staged / name)
        check_model_folder(staged)
        head, created, is_private = _prepare_branch(api, repo_id, branch, private)
        if private and not created and not is_private:
            notices.append(f"{repo_id} already exists and is public: --private applies only to new")
        operations = [CommitOperationAdd(name, str(staged / name)) for name in MODEL_FILES]
        summary = message or f"Upload kldm {config.task.upper()} model with `kldm weights push`"
        try:
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=summary,
                revision=branch,
                parent_commit=head,
            )
        except Exception as err:
            failure = _failed_commit(api, repo_id, branch, head, created, err)
            if failure is None:
                raise
            raise failure from err
    commit = str(info.oid)
    return PushResult(
        repo_id=repo_id,
        branch=branch,
        commit=commit,
        created=created,
        unchanged=commit == head,
        url=f"{endpoint}/{repo_id}/tree/{commit}",
        notices=tuple(notices),
    )


def _prepare_branch(api: Any, repo_id: str, branch: str, private: bool) -> tuple[str, bool, bool]:
    """Make sure ``repo_id`` and its ``branch`` exist; ``(branch head, created, private)``."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    label = hf_label(repo_id, None)
    created = False
    try:
        try:
            info = api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S)
        except RevisionNotFoundError:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S)
        except RepositoryNotFoundError:
            api.create_repo(repo_id, private=private, exist_ok=True)
            created = True
            if branch != "main":
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S)
    except Exception as err:
        reason = _push_reason(err, api.endpoint, label)
        if reason is None:
            raise
        raise HubPushError(f"{reason}; nothing was uploaded") from err
    return str(info.sha), created, bool(info.private)


def _failed_commit(
    api: Any, repo_id: str, branch: str, head: str, created: bool, err: BaseException
) -> HubPushError | None:
    """The error for a commit that failed, saying what the branch holds now (``None``: the
    error is not the Hub's and is raised as it is)."""
    label = hf_label(repo_id, None)
    reason = _push_reason(err, api.endpoint, label)
    if reason is None:
        return None
    status = getattr(getattr(err, "response", None), "status_code", 0)
    transient = is_connection_error(err) or status >= 500
    commits_url = f"{api.endpoint}/{repo_id}/commits/{branch}"
    try:
        now = str(api.repo_info(repo_id, revision=branch, timeout=HUB_TIMEOUT_S).sha)
    except Exception:
        now = None
    if now == head:
        state = f"nothing was committed: branch {branch} is unchanged at {head[:12]}"
        if created:
            state += f" (the empty repository {repo_id} created by this push is left in place)"
        if transient:
            state += "; run the same command again"
    elif now is None:
        state = f"the upload may be incomplete and the Hub could not be asked; see {commits_url}"
    else:
        state = (
            f"branch {branch} moved from {head[:12]} to {now[:12]} meanwhile; see {commits_url} "
            "before pushing again"
        )
    return HubPushError(f"upload failed: {reason}; {state}")


def _push_reason(err: BaseException, endpoint: str, label: str) -> str | None:
    """A one-line reason for a failed Hub call, or ``None`` for an error that is not the Hub's."""
    from huggingface_hub.errors import HfHubHTTPError

    if is_connection_error(err):
        return f"cannot reach the Hub at {endpoint} ({short_error(err)})"
    if not isinstance(err, HfHubHTTPError):
        return None
    status = getattr(err.response, "status_code", 0)
    if status == 401:
        return (
            f"the Hub at {endpoint} rejected the token (401 Unauthorized); set a valid HF_TOKEN "
            "or run `hf auth login`"
        )
    if status == 403:
        return (
            f"{label}: this token may not write there (403 Forbidden); push to your own "
            "namespace, ask the owner for write access, or use a token with write permission"
        )
    if status == 412:
        return f"{label}: the branch changed while uploading (412 Precondition Failed)"
    if status >= 500:
        return f"the Hub at {endpoint} failed ({status}: {short_error(err)})"
    return f"{label}: the Hub at {endpoint} answered {short_error(err)}"

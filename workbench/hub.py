"""Publish a saved model folder to the Hugging Face Hub, without leaking the token."""

from __future__ import annotations

import logging
from pathlib import Path

from workbench.security import find_tokens, scrub_secrets

logger = logging.getLogger(__name__)


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Create the model repository if needed and upload a saved model folder as one commit.

    The token goes into the Authorization header of the hub calls and nowhere else: it is not
    logged, and error messages are scrubbed of it (and of any other hub token).

    Args:
        folder: A saved model folder (`config.json`, weights, tokenizer, optionally README.md).
        repo_id: The repository, as `owner/name`.
        token: A hub token with write access; the locally saved login when None.
        private: Create the repository as private (an existing one keeps its visibility).

    Returns:
        The URL of the commit.

    Raises:
        FileNotFoundError: If the folder holds no `config.json`.
        ValueError: If `repo_id` is not `owner/name`, or a file in the folder holds a hub token.
        RuntimeError: If the hub refused or could not be reached (the message names why).

    Example:
        >>> push_to_hub("runs/scifact/final", "me/scifact-reranker", token=os.environ["HF_TOKEN"])
    """
    folder = Path(folder)
    _check_folder(folder)
    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must be owner/name, but got {repo_id!r}.")

    from huggingface_hub import HfApi

    api = HfApi(token=token or None)
    logger.info("Pushing %s to the hub repository %s", folder, repo_id)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder))
    except Exception as err:  # network, auth and hub errors all mean "not pushed"
        message = scrub_secrets(f"{type(err).__name__}: {err}", [token or ""])
        # `from None`: the chained original would print the unscrubbed message.
        raise RuntimeError(f"Push of {folder.name} to {repo_id!r} failed: {message}") from None
    logger.info("Pushed: %s", info.commit_url)
    return str(info.commit_url)


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} holds no config.json: pass a saved model folder, such as a run's "
            "final/ folder."
        )
    leaking = find_tokens(folder)
    if leaking:
        names = [str(path.relative_to(folder)) for path in leaking]
        raise ValueError(
            f"{str(folder)!r} has files that hold a hub token ({names!r}); refusing to publish "
            "them. Remove the token from those files first."
        )

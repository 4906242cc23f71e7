"""Copies of a run's adapter on the Hugging Face Hub (``hf://owner/repo`` or ``hf://owner/repo@branch``).

The adapter folder becomes the repository's root, so ``PeftModel.from_pretrained("owner/repo")`` and vLLM's
``--lora-modules name=owner/repo`` load it as they load any adapter on the hub; the run's manifest.json goes
with it as ``lora-run/manifest.json``. Everything is **one commit** (the hub's commits are atomic: the
repository shows the whole adapter or none of it), so the hub needs no "manifest last" ordering.

The transfers are huggingface_hub's: it hashes each file, asks the hub which large files it already has
(a retried pod sends only the missing ones), uploads them with its own retries, and skips files equal to
the branch's. What is ours:

- **before training** (step 3): the token is checked (``whoami``: refused or read-only is exit code 2), the
  repository is created private if it does not exist, and a branch is created and deleted as a write
  test, so a token that may not write fails the run before hours of training, like the s3:// test write;
- **verified**: after the commit, every file is looked up at that commit and compared with the manifest:
  large files by the SHA-256 the hub records for them (LFS), small ones by their git blob id, which is the
  SHA-1 of the content we hash ourselves;
- ``adapterUri`` pinned to the commit (``hf://owner/repo@<commit>``, huggingface_hub's own URI form), so a
  later push to the branch never changes what a status points at;
- failures after its retries are exit code 1 (the pod is retried), with the destination in the message.

The token: ``HF_TOKEN`` in the destination's ``credentialsSecret``, else the run's ``spec.hubTokenSecret``
(``$HF_TOKEN``). No hub is reachable where this project's tests run: docs/artifacts.md says what the tests
check and what they cannot.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2  # huggingface_hub's HTTP client: its transport errors (refused, reset, timed out)
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from lora_contract.api import OutputDestination, UploadedCopy
from lora_contract.wire import DESTINATION_SECRETS_ENV, HF_TOKEN_KEY
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.layout import sha256

MANIFEST_IN_REPO = "lora-run/manifest.json"
WRITE_CHECK_BRANCH = "lora-operator-write-check"


class HubError(StepError):
    """A commit or a read-back failed after huggingface_hub's retries: exit code 1, the pod is retried."""


@dataclass(frozen=True)
class HubRepository:
    repo_id: str  # owner/name
    branch: str | None  # None: the repository's default branch

    @classmethod
    def parse(cls, uri: str) -> HubRepository:
        repo_id, _, branch = uri.removeprefix("hf://").partition("@")
        return cls(repo_id, branch or None)

    def uri(self, revision: str | None = None) -> str:
        revision = revision or self.branch
        return f"hf://{self.repo_id}" + (f"@{revision}" if revision else "")


def git_blob_id(path: Path) -> str:
    """The id git (and so the hub) gives a file's content: SHA-1 of ``blob <size>\\0<content>``."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _token(index: int, dest: OutputDestination) -> str | None:
    """HF_TOKEN from the destination's Secret (mounted at $LORA_DESTINATION_SECRETS_DIR/<index>/HF_TOKEN), else
    None: huggingface_hub then takes $HF_TOKEN, the run's spec.hubTokenSecret."""
    root = os.environ.get(DESTINATION_SECRETS_ENV)
    if not dest.credentials_secret or not root:
        return None
    path = Path(root) / str(index) / HF_TOKEN_KEY
    token = path.read_text().strip() if path.is_file() else ""
    if not token:
        raise InvalidInput(f"output.destinations[{index}]: Secret {dest.credentials_secret} does not exist or lacks "
                           f"{HF_TOKEN_KEY} (create it in the job's namespace with a hub token that may write)")
    return token


class HubStore:
    """One destination: a model repository (and branch) on the hub, or on the endpoint a destination names."""

    def __init__(self, index: int, dest: OutputDestination, api: HfApi | None = None) -> None:
        self.index, self.dest = index, dest
        self.repo = HubRepository.parse(dest.uri)
        self.api = api or HfApi(endpoint=dest.endpoint, token=_token(index, dest))

    @property
    def where(self) -> str:
        return f"output.destinations[{self.index}] {self.dest.uri}" + (
            f" at {self.dest.endpoint}" if self.dest.endpoint else "")

    def _failed(self, what: str, err: Exception, preflight: bool = False) -> StepError:
        """Refused (401/403, or a missing repository or branch) before training: exit code 2; anything else, or
        anything after training: exit code 1 and a retry."""
        status = err.response.status_code if isinstance(err, HfHubHTTPError) and err.response is not None else None
        if status in (401, 403):
            hint = (f"check the token in Secret {self.dest.credentials_secret}" if self.dest.credentials_secret
                    else "set credentialsSecret (key HF_TOKEN) or spec.hubTokenSecret")
            message = f"{self.where}: {what} refused (HTTP {status}); {hint}"
            return (InvalidInput if preflight else HubError)(message)
        detail = f"HTTP {status}: {err}" if status else f"{type(err).__name__}: {err}"
        return (InvalidInput if preflight and status == 404 else HubError)(
            f"{self.where}: {what} failed after retries ({detail})")

    def check_writable(self) -> str:
        """Before training: a token that may write, the repository (created private if missing) and a write
        (a branch created and deleted), so a refused push fails step 3, not the end of the run."""
        if constants.HF_HUB_OFFLINE:
            raise InvalidInput(f"{self.where}: the hub is switched off ($HF_HUB_OFFLINE is set in the trainer)")
        if not (self.api.token or get_token()):
            raise InvalidInput(f"{self.where}: no hub token; set credentialsSecret (key HF_TOKEN) or "
                               "spec.hubTokenSecret")
        try:
            role = (self.api.whoami().get("auth") or {}).get("accessToken", {}).get("role")
            if role == "read":
                raise InvalidInput(f"{self.where}: the token is read-only; use a token with write access")
            self.api.create_repo(self.repo.repo_id, private=True, exist_ok=True)
            if self.repo.branch:
                self.api.create_branch(self.repo.repo_id, branch=self.repo.branch, exist_ok=True)
            self.api.create_branch(self.repo.repo_id, branch=WRITE_CHECK_BRANCH, exist_ok=True)
            self.api.delete_branch(self.repo.repo_id, branch=WRITE_CHECK_BRANCH)
        except (HfHubHTTPError, httpx2.HTTPError) as err:
            raise self._failed("a test write", err, preflight=True) from err
        return f"{self.dest.uri} writable"

    def publish(self, root: Path, files: list[dict[str, Any]], manifest: Path, adapter: str) -> UploadedCopy:
        """The adapter's files of the run's manifest at the repository's root and the manifest under
        lora-run/, in one commit; then every file looked up at that commit and compared with the manifest."""
        entries = {e["path"].removeprefix(adapter + "/"): e for e in files if e["path"].startswith(adapter + "/")}
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(root / e["path"]))
                      for name, e in entries.items()]
        operations.append(CommitOperationAdd(path_in_repo=MANIFEST_IN_REPO, path_or_fileobj=str(manifest)))
        try:
            commit = self.api.create_commit(
                self.repo.repo_id, operations, revision=self.repo.branch,
                commit_message=f"LoRA adapter ({len(entries)} files) by lora-operator",
                commit_description=f"The run's manifest.json (SHA-256 of every file) is {MANIFEST_IN_REPO}.")
            found = self.api.get_paths_info(self.repo.repo_id, [*entries, MANIFEST_IN_REPO], revision=commit.oid)
        except (HfHubHTTPError, httpx2.HTTPError) as err:
            raise self._failed("the commit", err) from err
        served = {f.path: f for f in found}
        expected = {name: (root / e["path"], e["bytes"], e["sha256"]) for name, e in entries.items()}
        expected[MANIFEST_IN_REPO] = (manifest, manifest.stat().st_size, None)
        for name, (path, size, digest) in expected.items():
            self._verify(name, served.get(name), path, size, digest)
        return UploadedCopy(uri=self.dest.uri, adapter_uri=self.repo.uri(commit.oid), digest=f"git:{commit.oid}",
                            files=len(expected), bytes=sum(size for _, size, _ in expected.values()))

    def _verify(self, name: str, served: Any, path: Path, size: int, digest: str | None) -> None:
        """``name`` as the hub has it at the commit: its size, and its LFS SHA-256 or its git blob id."""
        if served is None or getattr(served, "size", None) != size:
            raise HubError(f"{self.where}: {name} is missing or has another size at the new commit")
        lfs = getattr(served, "lfs", None)  # large files: the SHA-256 the hub keeps; small ones: git's blob id
        if (lfs.sha256 != (digest or sha256(path))) if lfs is not None else served.blob_id != git_blob_id(path):
            raise HubError(f"{self.where}: {name} at the new commit differs from the file sent (hash); the retry "
                           "commits it again")

"""hf:// destinations (trainer-image/lora_trainer/hub.py).

No Hugging Face Hub is reachable here and none can be run (it is a closed service), so these tests replace
the hub, and only the hub: ``FakeHub`` answers the calls our store makes, through an ``HfApi`` autospec (a
call whose arguments huggingface_hub's real methods would refuse fails the test), with replies parsed by
huggingface_hub's own types (``RepoFile`` from the hub's JSON shape). The files and operations are real:
``CommitOperationAdd`` hashes each file as it would before an upload, and that SHA-256 must be the run
manifest's. What these tests cannot show, and docs/artifacts.md says so: the hub's own behaviour (LFS/Xet
transfers, its retries, its permission model for fine-grained tokens).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import create_autospec

import httpx2
import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile

from lora_contract.api import OutputDestination
from lora_contract.wire import DESTINATION_SECRETS_ENV, EXIT_FAILED, EXIT_INVALID_INPUT
from lora_trainer.destinations import open_stores
from lora_trainer.errors import InvalidInput, exit_code
from lora_trainer.hub import MANIFEST_IN_REPO, WRITE_CHECK_BRANCH, HubError, HubStore, git_blob_id
from lora_trainer.layout import sha256


def _refused(status: int) -> HfHubHTTPError:
    request = httpx2.Request("GET", "https://huggingface.co/api/whoami-v2")
    return HfHubHTTPError(f"{status} Client Error", response=httpx2.Response(status, request=request))


class FakeHub:
    """The hub's side of the calls, for one token: repositories, branches and the files of each commit."""

    def __init__(self, role: str = "write", refuse: int | None = None) -> None:
        self.role, self.refuse = role, refuse
        self.repos: dict[str, dict] = {}
        self.commits: dict[str, dict[str, bytes]] = {}
        self.calls: list[str] = []
        self.corrupt: str | None = None  # a path the hub stores wrongly (a damaged upload)
        self.api = create_autospec(HfApi, instance=True, token="hf_fake")
        for name in ("whoami", "create_repo", "create_branch", "delete_branch", "create_commit", "get_paths_info"):
            getattr(self.api, name).side_effect = getattr(self, name)

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.refuse:
            raise _refused(self.refuse)

    def whoami(self, token=None, *, cache=False) -> dict:
        self._check("whoami")
        return {"name": "team-a-bot", "auth": {"accessToken": {"role": self.role}}}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **_) -> str:
        self._check(f"create_repo {repo_id} private={private}")
        self.repos.setdefault(repo_id, {"main": {}})
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, *, branch, exist_ok=False, **_) -> None:
        self._check(f"create_branch {branch}")
        self.repos[repo_id].setdefault(branch, dict(self.repos[repo_id]["main"]))

    def delete_branch(self, repo_id, *, branch, **_) -> None:
        self._check(f"delete_branch {branch}")
        del self.repos[repo_id][branch]

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, **_) -> SimpleNamespace:
        self._check(f"create_commit {revision or 'main'}")
        files = self.repos[repo_id][revision or "main"]
        for op in operations:
            files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
            if op.path_in_repo == self.corrupt:
                files[op.path_in_repo] = b"x" + files[op.path_in_repo][1:]
        oid = hashlib.sha1(json.dumps(sorted(files)).encode() + commit_message.encode()).hexdigest()
        self.commits[oid] = dict(files)
        return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}")

    def get_paths_info(self, repo_id, paths, *, revision=None, **_) -> list[RepoFile]:
        """As the hub's /paths-info answers: LFS for *.safetensors (the default .gitattributes of a repo)."""
        self._check(f"get_paths_info {revision}")
        found = []
        for path in paths:
            data = self.commits[revision].get(path)
            if data is None:
                continue
            blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
            lfs = ({"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                   if path.endswith(".safetensors") else None)
            found.append(RepoFile(type="file", path=path, size=len(data), oid=blob, lfs=lfs))
        return found


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests run with $HF_HUB_OFFLINE=1 (nothing may reach the real hub); the fake hub stands for an online one."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def run_output(tmp_path: Path) -> tuple[Path, list[dict], Path]:
    """A run's output folder: an adapter (config, weights, tokenizer), a merged model and the manifest."""
    root = tmp_path / "output"
    for relative, data in {"adapter/adapter_config.json": b'{"r": 8, "peft_type": "LORA"}',
                           "adapter/adapter_model.safetensors": bytes(range(256)) * 64,
                           "adapter/tokenizer.json": b'{"version": "1.0"}',
                           "merged/model.safetensors": b"\0" * 4096}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    files = [{"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(root.rglob("*")) if p.is_file()]
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"files": files}))
    return root, files, manifest


def _store(hub: FakeHub, uri: str = "hf://team-a/quickstart-adapter") -> HubStore:
    return HubStore(0, OutputDestination(uri=uri), api=hub.api)


def test_the_adapter_lands_at_the_repository_root_in_one_verified_commit_pinned_by_the_status(run_output):
    root, files, manifest = run_output
    hub = FakeHub()
    store = _store(hub)
    assert store.check_writable() == "hf://team-a/quickstart-adapter writable"
    copy = store.publish(root, files, manifest, "adapter")

    commit = copy.adapter_uri.rsplit("@", 1)[1]
    assert copy.adapter_uri == f"hf://team-a/quickstart-adapter@{commit}" and copy.digest == f"git:{commit}"
    served = hub.commits[commit]
    # The adapter's files at the root (PeftModel.from_pretrained("team-a/quickstart-adapter") loads them), the
    # manifest beside them, the merged model not at all (a registry and the hub get the adapter only).
    assert sorted(served) == ["adapter_config.json", "adapter_model.safetensors", MANIFEST_IN_REPO, "tokenizer.json"]
    for entry in files[:3]:
        assert served[entry["path"].removeprefix("adapter/")] == (root / entry["path"]).read_bytes()
    assert copy.files == 4 and copy.bytes == sum(e["bytes"] for e in files[:3]) + manifest.stat().st_size
    assert [c.split()[0] for c in hub.calls] == ["whoami", "create_repo", "create_branch", "delete_branch",
                                                 "create_commit", "get_paths_info"]
    assert "create_repo team-a/quickstart-adapter private=True" in hub.calls  # a new repository is private
    assert WRITE_CHECK_BRANCH not in hub.repos["team-a/quickstart-adapter"]  # the write test left nothing


def test_huggingface_hub_hashes_each_file_as_the_manifest_does():
    """What the hub records for a large file is the SHA-256 huggingface_hub computes before the upload."""
    from huggingface_hub import CommitOperationAdd

    data = bytes(range(256)) * 1000
    op = CommitOperationAdd(path_in_repo="adapter_model.safetensors", path_or_fileobj=data)
    assert op.upload_info.sha256.hex() == hashlib.sha256(data).hexdigest()


def test_a_branch_destination_commits_there_and_creates_it_before_training(run_output):
    root, files, manifest = run_output
    hub = FakeHub()
    store = _store(hub, "hf://team-a/quickstart-adapter@run-7")
    store.check_writable()
    assert "run-7" in hub.repos["team-a/quickstart-adapter"]
    copy = store.publish(root, files, manifest, "adapter")
    assert "create_commit run-7" in hub.calls and copy.uri == "hf://team-a/quickstart-adapter@run-7"


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "adapter_config.json", MANIFEST_IN_REPO])
def test_a_file_the_hub_holds_differently_fails_the_upload_for_a_retry(run_output, damaged):
    """Large files are checked by the hub's SHA-256, small ones by their git blob id."""
    root, files, manifest = run_output
    hub = FakeHub()
    store = _store(hub)
    store.check_writable()
    hub.corrupt = damaged
    with pytest.raises(HubError, match=f"{damaged} at the new commit differs") as err:
        store.publish(root, files, manifest, "adapter")
    assert exit_code(err.value) == EXIT_FAILED


def test_git_blob_id_is_gits(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello\n")
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert git_blob_id(path) == expected.stdout.strip()


@pytest.mark.parametrize(("hub", "says"), [
    (FakeHub(refuse=401), "a test write refused (HTTP 401); set credentialsSecret"),
    (FakeHub(refuse=403), "a test write refused (HTTP 403)"),
    (FakeHub(role="read"), "the token is read-only"),
])  # fmt: skip
def test_a_token_that_cannot_write_fails_before_training(hub, says):
    with pytest.raises(InvalidInput, match=re.escape(says)) as err:
        _store(hub).check_writable()
    assert exit_code(err.value) == EXIT_INVALID_INPUT
    assert not any(c.startswith("create_commit") for c in hub.calls)


def test_a_refusal_after_training_is_retried_not_final(run_output):
    """A token revoked while the run trained: exit code 1 (a retry with a fixed Secret can still publish)."""
    root, files, manifest = run_output
    hub = FakeHub()
    store = _store(hub)
    store.check_writable()
    hub.refuse = 401
    with pytest.raises(HubError, match="the commit refused") as err:
        store.publish(root, files, manifest, "adapter")
    assert exit_code(err.value) == EXIT_FAILED


def test_an_unreachable_hub_is_retryable():
    """The real client against a port where nothing listens (exit code 1: the pod is retried)."""
    with pytest.raises(HubError, match=r"a test write failed after retries \(ConnectError") as err:
        HubStore(0, OutputDestination(uri="hf://team-a/x", endpoint="http://127.0.0.1:9"),
                 api=HfApi(endpoint="http://127.0.0.1:9", token="hf_x")).check_writable()
    assert exit_code(err.value) == EXIT_FAILED


def test_offline_or_tokenless_trainers_are_told_before_training(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InvalidInput, match="HF_HUB_OFFLINE"):
        _store(FakeHub()).check_writable()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    store = HubStore(0, OutputDestination(uri="hf://team-a/x"), api=HfApi(token=False))
    monkeypatch.setattr("lora_trainer.hub.get_token", lambda: None)
    with pytest.raises(InvalidInput, match="no hub token; set credentialsSecret"):
        store.check_writable()


def test_the_token_comes_from_the_destination_secret(tmp_path, monkeypatch):
    monkeypatch.setenv(DESTINATION_SECRETS_ENV, str(tmp_path))
    dest = OutputDestination(uri="hf://team-a/x", credentialsSecret="hub-push")
    with pytest.raises(InvalidInput, match="Secret hub-push does not exist or lacks HF_TOKEN"):
        HubStore(0, dest)
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "HF_TOKEN").write_text("hf_secret\n")
    (store,) = open_stores([dest])
    assert isinstance(store, HubStore) and store.api.token == "hf_secret"

"""Copies of a run's adapter in OCI registries (``oci://registry/repository:tag``), as CNCF ModelPack artifacts.

The format (docs/artifacts.md, "OCI registries"): an OCI image manifest with ``artifactType``
``application/vnd.cncf.model.manifest.v1+json``, a ModelPack config, and one uncompressed layer per file of
the adapter folder (the weights as ``...weight.v1.raw``, the config, tokenizer and template files as
``...weight.config.v1.raw``), each annotated with its path (``org.cncf.model.filepath``) and its name
(``org.opencontainers.image.title``, by which ``oras pull`` writes it). Raw layers keep each layer's digest
equal to the file's SHA-256, so the manifest.json of the run vouches for the artifact without any tar.

The transfers and the registry's auth (basic, or a bearer token from its token service) are oras-py's; its
blob upload skips a blob the registry already has, so a retried pod sends only what is missing. What it
lacks we add: a timeout on every request (it sets none, so a stalled registry would hang the run), the
manifest sent as exact bytes with its artifactType (its ``push()`` cannot set one), credentials read from a
``kubernetes.io/dockerconfigjson`` Secret, a test push before training, and the read-back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any

import oras.oci
import oras.provider
import requests

from lora_contract.api import OutputDestination, UploadedCopy
from lora_contract.wire import DESTINATION_SECRETS_ENV, DOCKER_CONFIG_KEY, timestamp
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.layout import sha256

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"
REQUEST_TIMEOUT = (10, 300)  # seconds to connect, and between two reads of a reply


class RegistryError(StepError):
    """A push or read-back failed after oras-py's retries: exit code 1, the pod is retried (and re-sends
    only the blobs the registry lacks)."""


@dataclass(frozen=True)
class OciReference:
    registry: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, uri: str) -> OciReference:
        registry, _, rest = uri.removeprefix("oci://").partition("/")
        repository, _, tag = rest.rpartition(":")
        return cls(registry, repository, tag)

    def uri(self, digest: str | None = None) -> str:
        return f"oci://{self.registry}/{self.repository}" + (f"@{digest}" if digest else f":{self.tag}")


def _credentials(index: int, dest: OutputDestination, registry: str) -> tuple[str, str] | None:
    """The user and password for ``registry`` in the destination's dockerconfigjson Secret, which the operator
    mounts at $LORA_DESTINATION_SECRETS_DIR/<index>/.dockerconfigjson. None without a Secret (anonymous)."""
    root = os.environ.get(DESTINATION_SECRETS_ENV)
    if not dest.credentials_secret or not root:
        return None
    where = f"output.destinations[{index}]: Secret {dest.credentials_secret}"
    path = Path(root) / str(index) / DOCKER_CONFIG_KEY
    try:
        auths = json.loads(path.read_text()).get("auths") or {}
    except FileNotFoundError:
        raise InvalidInput(f"{where} does not exist or has no {DOCKER_CONFIG_KEY} key (create it with kubectl "
                           "create secret docker-registry)") from None
    except (ValueError, AttributeError) as err:
        raise InvalidInput(f"{where}: {DOCKER_CONFIG_KEY} is not a docker config JSON ({err})") from None
    for key, entry in auths.items():  # keys are "host[:port]", possibly with a scheme and a path
        if key.split("://", 1)[-1].split("/", 1)[0] != registry or not isinstance(entry, dict):
            continue
        if entry.get("username") is not None and entry.get("password") is not None:
            return entry["username"], entry["password"]
        user, colon, password = base64.b64decode(entry.get("auth") or "").decode(errors="replace").partition(":")
        if colon:
            return user, password
    raise InvalidInput(f"{where}: {DOCKER_CONFIG_KEY} has no credentials for {registry} (its auths: "
                       f"{', '.join(sorted(auths)) or 'none'})")


class _TimedSession(requests.Session):
    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return super().request(*args, **kwargs)


class _Registry(oras.provider.Registry):
    """oras-py's registry client, every request with a timeout (the auth backend shares the session)."""

    def __init__(self, hostname: str, insecure: bool, auth_backend: str) -> None:
        super().__init__(hostname=hostname, insecure=insecure, auth_backend=auth_backend)
        session = _TimedSession()
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # as oras-py does (Harbor)
        self.session = self.auth.session = session


def media_type(path: str) -> str:
    return WEIGHT if path.endswith(".safetensors") else WEIGHT_CONFIG


class OciStore:
    """One destination: a repository and tag in one registry."""

    def __init__(self, index: int, dest: OutputDestination) -> None:
        self.index, self.dest = index, dest
        self.ref = OciReference.parse(dest.uri)
        self.credentials = _credentials(index, dest, self.ref.registry)
        self.scheme = "http" if dest.plain_http else "https"
        self._client: _Registry | None = None

    @property
    def where(self) -> str:
        return f"output.destinations[{self.index}] {self.dest.uri}"

    def client(self) -> _Registry:
        """A client with the auth the registry asks for: its challenge at /v2/ says Basic (htpasswd registries)
        or Bearer (a token service: Docker Hub, GHCR, Harbor, ECR, ACR, distribution with token auth)."""
        if self._client is None:
            try:
                challenge = requests.get(f"{self.scheme}://{self.ref.registry}/v2/", timeout=REQUEST_TIMEOUT
                                         ).headers.get("Www-Authenticate", "")
            except requests.RequestException as err:
                raise RegistryError(f"{self.where}: cannot reach the registry ({err})") from err
            backend = "basic" if challenge.lower().startswith("basic") else "token"
            self._client = _Registry(self.ref.registry, self.dest.plain_http, backend)
            if self.credentials:
                self._client.auth.set_basic_auth(*self.credentials)
        return self._client

    def _request(self, what: str, url: str, method: str = "GET", **kwargs: Any) -> requests.Response:
        try:
            response = self.client().do_request(f"{self.scheme}://{url}", method, **kwargs)
        except (requests.RequestException, ValueError) as err:
            raise RegistryError(f"{self.where}: {what} failed after retries ({type(err).__name__}: {err})") from err
        if response.status_code in (401, 403):
            hint = (f"check the Secret {self.dest.credentials_secret}" if self.dest.credentials_secret
                    else "set credentialsSecret (a kubernetes.io/dockerconfigjson Secret)")
            raise RegistryError(f"{self.where}: {what} refused (HTTP {response.status_code}); {hint}")
        if response.status_code >= 300:
            raise RegistryError(f"{self.where}: {what}: HTTP {response.status_code} {response.text[:300]}")
        return response

    def check_writable(self) -> str:
        """Before training: open a blob upload and cancel it, so refused credentials fail step 3 (exit code 2),
        not the push after hours of training."""
        container = self.client().get_container(f"{self.ref.registry}/{self.ref.repository}:{self.ref.tag}")
        try:
            response = self._request("a test push", container.upload_blob_url(), "POST")
        except RegistryError as err:
            raise (InvalidInput(str(err)) if "refused" in str(err) else err) from None
        location = response.headers.get("Location", "")
        if location:  # cancel the upload session; a registry that keeps it expires it anyway
            url = location if "://" in location else f"{self.scheme}://{self.ref.registry}{location}"
            self.client().do_request(url, "DELETE")
        return f"{self.dest.uri} writable"

    def publish(self, root: Path, files: list[dict[str, Any]], manifest: Path, adapter: str) -> UploadedCopy:
        """Push the adapter's files of the run's manifest as a ModelPack artifact under the tag, then read the
        manifest back by its digest and every blob against its SHA-256. Only the adapter goes to a registry."""
        client = self.client()
        container = client.get_container(f"{self.ref.registry}/{self.ref.repository}:{self.ref.tag}")
        entries = [e for e in files if e["path"].startswith(adapter + "/")]
        layers = []
        for entry in entries:
            name = entry["path"].removeprefix(adapter + "/")
            layer = {"mediaType": media_type(name), "digest": f"sha256:{entry['sha256']}", "size": entry["bytes"],
                     "annotations": {TITLE: name, FILEPATH: name}}
            self._push_blob(f"pushing {name}", root / entry["path"], container, layer)
            layers.append(layer)
        run_manifest = sha256(manifest)
        config = json.dumps({
            "descriptor": {"createdAt": timestamp(), "family": "lora-adapter", "name": self.ref.repository},
            "config": {"format": "safetensors"},
            "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},  # raw: digest = diffID
        }, sort_keys=True, separators=(",", ":")).encode()
        config_path = manifest.with_name(f".oci-config-{self.index}.json")
        config_path.write_bytes(config)
        config_layer = oras.oci.NewLayer(str(config_path), media_type=CONFIG_MEDIA_TYPE)
        self._push_blob("pushing the config", config_path, container, config_layer)
        config_path.unlink()
        body = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
            "config": {k: config_layer[k] for k in ("mediaType", "digest", "size")}, "layers": layers,
            "annotations": {"org.opencontainers.image.created": timestamp(), TITLE: self.ref.repository,
                            "io.airepublic.lora.manifest-sha256": run_manifest},
        }, sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._request("pushing the manifest", container.manifest_url(), "PUT", data=body,
                      headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        self._verify(container, digest, [*layers, config_layer])
        return UploadedCopy(uri=self.dest.uri, adapter_uri=self.ref.uri(digest), digest=digest, files=len(layers),
                            bytes=sum(layer["size"] for layer in layers) + len(config) + len(body))

    def _push_blob(self, what: str, path: Path, container: Any, layer: dict[str, Any]) -> None:
        """One blob, unless the registry has it (oras-py asks first)."""
        try:
            response = self.client().upload_blob(str(path), container, layer)
        except (requests.RequestException, ValueError) as err:  # oras-py raises ValueError for refused sessions
            raise RegistryError(f"{self.where}: {what} failed after retries ({type(err).__name__}: {err})") from err
        if response.status_code not in (200, 201, 202):
            raise RegistryError(f"{self.where}: {what}: HTTP {response.status_code} {response.text[:300]}")

    def _verify(self, container: Any, digest: str, blobs: list[dict[str, Any]]) -> None:
        """The manifest as the registry serves it by digest, and every blob, hashed against what was sent."""
        served = self._request("reading back the manifest", container.manifest_url(digest), headers={
            "Accept": MANIFEST_MEDIA_TYPE}).content
        if "sha256:" + hashlib.sha256(served).hexdigest() != digest:
            raise RegistryError(f"{self.where}: the manifest read back differs from the one pushed")
        for blob in blobs:
            response = self._request(f"reading back {blob['digest']}", container.get_blob_url(blob["digest"]),
                                     stream=True)
            h, size = hashlib.sha256(), 0
            for chunk in response.iter_content(1 << 20):
                h.update(chunk)
                size += len(chunk)
            if ("sha256:" + h.hexdigest(), size) != (blob["digest"], blob["size"]):
                raise RegistryError(f"{self.where}: blob {blob['digest']} read back differs from what was pushed")

"""Copies of a run's results in S3-compatible object stores (``spec.output.destinations``, docs/artifacts.md).

The transfers are boto3's: multipart uploads with each part retried, and its ``standard`` retry mode for
throttling, 5xx replies and dropped connections, with backoff. What is ours is what a training run needs
on top:

- **order**: every file first, ``manifest.json`` last, so a manifest at a destination vouches for a
  complete copy; a retry deletes the old manifest before it rewrites anything;
- **resumable**: each object carries its SHA-256 in its metadata, and a file already there with the same
  size and hash is not sent again, so a retried pod carries on where a killed one stopped, file by file;
- **verified**: every object is read back and hashed against the manifest before the copy is reported;
  nothing half-written ever reaches ``status.trainer.artifacts``;
- **checkpoints**: the first s3:// destination mirrors ``checkpoints/`` during training (each checkpoint's
  completion marker last, like on the volume), and a pod that finds no checkpoint on its own volume
  fetches the newest complete one from there;
- **messages** that say which destination, which endpoint and what to fix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from lora_contract.api import OutputDestination, UploadedCopy
from lora_contract.wire import DESTINATION_SECRETS_ENV, S3_SECRET_KEYS
from lora_trainer.checkpoints import MARKER
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.hub import HubStore
from lora_trainer.layout import sha256
from lora_trainer.oci import OciStore

CREDENTIAL_KEYS = S3_SECRET_KEYS[:2]  # required; the session token only with temporary keys
SESSION_TOKEN_KEY = S3_SECRET_KEYS[2]
HASH_METADATA = "sha256"  # x-amz-meta-sha256 on every object we upload
CHECKPOINTS = "checkpoints"
WRITE_CHECK = ".lora-operator-write-check"
# Errors that no retry fixes: the bucket or the credentials are wrong (a Failed run at once, exit code 2).
_REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "AllAccessDisabled",
            "InvalidBucketName", "AuthorizationHeaderMalformed", "InvalidToken", "ExpiredToken", "403", "404"}


class DestinationError(StepError):
    """An upload, a read-back or a listing failed after boto3's retries: exit code 1, the pod is retried
    (and resumes: files already uploaded are not sent again)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket's root

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return cls(bucket, prefix.strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def uri(self, relative: str = "") -> str:
        key = self.key(relative) if relative else self.prefix
        return f"s3://{self.bucket}/{key}".rstrip("/")


def _credentials(index: int, dest: OutputDestination) -> dict[str, str]:
    """Keys from the destination's Secret, which the operator mounts at $LORA_DESTINATION_SECRETS_DIR/<index>/.
    Without a Secret, or outside Kubernetes (no such folder set), boto3's default chain finds them."""
    root = os.environ.get(DESTINATION_SECRETS_ENV)
    if not dest.credentials_secret or not root:
        return {}
    folder = Path(root) / str(index)
    values = {k: (folder / k).read_text().strip()
              for k in (*CREDENTIAL_KEYS, SESSION_TOKEN_KEY) if (folder / k).is_file()}
    missing = [k for k in CREDENTIAL_KEYS if not values.get(k)]
    if missing:
        raise InvalidInput(
            f"output.destinations[{index}]: Secret {dest.credentials_secret} does not exist or lacks "
            f"{' and '.join(missing)} (create it in the job's namespace with keys AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY)")
    return {"aws_access_key_id": values["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": values["AWS_SECRET_ACCESS_KEY"],
            **({"aws_session_token": values[SESSION_TOKEN_KEY]} if values.get(SESSION_TOKEN_KEY) else {})}


class S3Store:
    """One destination: a bucket and prefix on one endpoint, with its client."""

    def __init__(self, index: int, dest: OutputDestination) -> None:
        self.index, self.dest = index, dest
        self.location = S3Location.parse(dest.uri)
        self.client = boto3.client(
            "s3", endpoint_url=dest.endpoint, region_name=dest.region or "us-east-1",
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                # Buckets behind a custom endpoint are rarely reachable as <bucket>.<host> (virtual hosts).
                s3={"addressing_style": "path" if dest.endpoint else "auto"},
                # Non-AWS stores (older MinIO, Ceph, SeaweedFS) reject the CRC trailers boto3 sends by default;
                # our own SHA-256 read-back is the integrity check that works on all of them.
                request_checksum_calculation="when_required", response_checksum_validation="when_required"),
            **_credentials(index, dest))

    @property
    def where(self) -> str:
        return f"output.destinations[{self.index}] {self.dest.uri}" + (
            f" at {self.dest.endpoint}" if self.dest.endpoint else "")

    def _failed(self, what: str, err: Exception, preflight: bool = False) -> StepError:
        """A clear error for ``err``; refused credentials or a missing bucket are InvalidInput when checked
        before training (nothing a retry changes), a DestinationError (retried) once the run has results."""
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            detail = f"{code}: {err.response.get('Error', {}).get('Message') or 'no message'}"
            hint = {"NoSuchBucket": "create the bucket", "404": "create the bucket"}.get(
                code, f"check the Secret {self.dest.credentials_secret}" if self.dest.credentials_secret
                else "set credentialsSecret or give the run's ServiceAccount access")
            message = f"{self.where}: {what} refused ({detail}); {hint}"
            return (InvalidInput if preflight and code in _REFUSED else DestinationError)(message)
        if isinstance(err, NoCredentialsError):
            return InvalidInput(f"{self.where}: {what}: no credentials found; set credentialsSecret")
        if isinstance(err, EndpointConnectionError):
            return DestinationError(f"{self.where}: {what}: cannot connect to the endpoint after retries ({err})")
        return DestinationError(f"{self.where}: {what} failed after retries ({type(err).__name__}: {err})")

    # ---------------------------------------------------------------- primitives

    def check_writable(self) -> str:
        """Before training: write and delete a small object, so wrong credentials or a missing bucket fail the
        run in step 3, not after hours of training."""
        key = self.location.key(WRITE_CHECK)
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=b"lora-operator write check\n")
            self.client.delete_object(Bucket=self.location.bucket, Key=key)
        except (ClientError, BotoCoreError) as err:
            raise self._failed("a test write", err, preflight=True) from err
        return f"{self.dest.uri} writable"

    def _remote_hash(self, key: str) -> tuple[int, str] | None:
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"]), head.get("Metadata", {}).get(HASH_METADATA, "")

    def upload(self, path: Path, relative: str, digest: str | None = None) -> bool:
        """``path`` to ``<prefix>/<relative>`` unless an equal object is there; True when it was sent.
        ``digest``: its SHA-256, when the manifest already has it."""
        digest = digest or sha256(path)
        key = self.location.key(relative)
        try:
            if self._remote_hash(key) == (path.stat().st_size, digest):
                return False
            self.client.upload_file(str(path), self.location.bucket, key,
                                    ExtraArgs={"Metadata": {HASH_METADATA: digest}})
        except (ClientError, BotoCoreError) as err:
            raise self._failed(f"uploading {relative}", err) from err
        return True

    def read_back(self, relative: str) -> tuple[int, str]:
        """Size and SHA-256 of the object as the store serves it now (streamed, never held whole)."""
        digest, size = hashlib.sha256(), 0
        try:
            body = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(relative))["Body"]
            for chunk in body.iter_chunks(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        except (ClientError, BotoCoreError) as err:
            raise self._failed(f"reading back {relative}", err) from err
        return size, digest.hexdigest()

    def keys(self, relative: str) -> Iterator[tuple[str, int]]:
        """(path relative to the prefix, size) of every object under ``<prefix>/<relative>/``."""
        root = self.location.key(relative).rstrip("/") + "/"
        start = len(self.location.key(""))
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket,
                                                                              Prefix=root):
                for item in page.get("Contents", []):
                    yield item["Key"][start:], int(item["Size"])
        except (ClientError, BotoCoreError) as err:
            raise self._failed(f"listing {relative}/", err) from err

    def delete(self, relatives: Iterable[str]) -> None:
        keys = [{"Key": self.location.key(r)} for r in relatives]
        try:
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                self.client.delete_objects(Bucket=self.location.bucket, Delete={"Objects": keys[start:start + 1000],
                                                                                "Quiet": True})
        except (ClientError, BotoCoreError) as err:
            raise self._failed("deleting old objects", err) from err

    def download(self, relative: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.location.bucket, self.location.key(relative), str(path))
        except (ClientError, BotoCoreError) as err:
            raise self._failed(f"downloading {relative}", err) from err

    # ---------------------------------------------------------------- results

    def publish(self, root: Path, files: list[dict[str, Any]], manifest: Path, adapter: str) -> UploadedCopy:
        """Upload the manifest's ``files`` (paths relative to ``root``), read every one back against its size
        and SHA-256, then the manifest itself, last. Returns the verified copy."""
        self.delete([manifest.name])  # a retry: the old manifest must not vouch for files being rewritten
        for entry in files:
            self.upload(root / entry["path"], entry["path"], entry["sha256"])
        for entry in files:
            if self.read_back(entry["path"]) != (entry["bytes"], entry["sha256"]):
                raise DestinationError(f"{self.where}: {entry['path']} read back differs from what was uploaded "
                                       "(size or SHA-256); the retry uploads it again")
        digest = sha256(manifest)
        self.upload(manifest, manifest.name, digest)
        if self.read_back(manifest.name) != (manifest.stat().st_size, digest):
            raise DestinationError(f"{self.where}: manifest.json read back differs from what was uploaded")
        return UploadedCopy(uri=self.location.uri(), adapter_uri=self.location.uri(adapter),
                            digest=f"sha256:{digest}", files=len(files) + 1,
                            bytes=sum(e["bytes"] for e in files) + manifest.stat().st_size)

    def upload_tree(self, root: Path, relative: str) -> int:
        """Every file under ``root/relative`` (evaluation records), as they are; the number sent."""
        folder = root / relative
        return sum(self.upload(p, str(p.relative_to(root))) for p in sorted(folder.rglob("*")) if p.is_file())


class CheckpointMirror:
    """``checkpoints/`` of the volume kept on a destination while training, so a retry on another node (an
    emptyDir output, or a RWO volume that cannot follow it) resumes from the newest checkpoint."""

    def __init__(self, store: S3Store, local: Path) -> None:
        self.store, self.local = store, local

    def push(self, checkpoint: Path) -> None:
        """A complete checkpoint (its marker written): its files, the marker last, then remove the mirrored
        checkpoints the Trainer has rotated away on the volume."""
        files = sorted((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: p.name == MARKER)
        for path in files:
            self.store.upload(path, f"{CHECKPOINTS}/{path.relative_to(self.local)}")
        kept = {p.name for p in self.local.iterdir() if p.is_dir()}
        self.store.delete([k for k, _ in self.store.keys(CHECKPOINTS) if k.split("/")[1] not in kept])

    def pull(self) -> str | None:
        """With no checkpoint on the volume: download the destination's newest complete one (it has its
        marker; files first, marker last, like every write here). Returns its name, or None."""
        if self.local.is_dir() and any((p / MARKER).is_file() for p in self.local.iterdir() if p.is_dir()):
            return None
        folders: dict[str, list[str]] = {}
        for key, _ in self.store.keys(CHECKPOINTS):
            folders.setdefault(key.split("/")[1], []).append(key)
        complete = [name for name, keys in folders.items()
                    if f"{CHECKPOINTS}/{name}/{MARKER}" in keys and name.removeprefix("checkpoint-").isdigit()]
        if not complete:
            return None
        newest = max(complete, key=lambda name: int(name.removeprefix("checkpoint-")))
        for key in sorted(folders[newest], key=lambda k: k.endswith("/" + MARKER)):
            self.store.download(key, self.local / key.removeprefix(CHECKPOINTS + "/"))
        return newest

    def remove(self) -> int:
        """Delete the mirrored checkpoints (after a successful run); the bytes freed."""
        found = list(self.store.keys(CHECKPOINTS))
        self.store.delete(k for k, _ in found)
        return sum(size for _, size in found)


Store = S3Store | OciStore | HubStore


def open_stores(destinations: list[OutputDestination]) -> list[Store]:
    """A store per destination, by its uri's scheme."""
    kinds: dict[str, type[Store]] = {"s3": S3Store, "oci": OciStore, "hf": HubStore}
    return [kinds[d.uri.split("://", 1)[0]](i, d) for i, d in enumerate(destinations)]

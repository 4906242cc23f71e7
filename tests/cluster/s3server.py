"""A real S3-compatible server for the artifact tests: SeaweedFS (`weed server -s3`), built from its Go
module by build_seaweedfs.sh and run on this host, never a mock of S3.

It listens on every address, so the trainer reaches it at 127.0.0.1 as a process-node pod and at the real
node's bridge address (realnode.NODE_IP) from a container. One identity with a random secret can do
everything; ``client()`` is a boto3 client for checking what the trainer uploaded.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import time
from pathlib import Path

import boto3
from botocore.config import Config

from tests.cluster.controlplane import free_port, terminate_group

ROOT = Path(__file__).resolve().parents[2]


class S3Server:
    """``weed server`` with master, volume, filer and S3 gateway on free ports, data under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.access_key, self.secret_key = "lora-tests", secrets.token_hex(16)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def endpoint(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def start(self) -> S3Server:
        weed = subprocess.run(["bash", str(ROOT / "tests/cluster/build_seaweedfs.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "lora-tests", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {f"-{part}.port{suffix}": str(free_port()) for part in ("master", "volume", "filer")
                 for suffix in ("", ".grpc")}
        argv = [weed, "server", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=0.0.0.0",
                *(f"{flag}={port}" for flag, port in ports.items()), "-master.telemetry=false",
                # Each bucket is a collection that grows 7 volumes at once: with small volumes, let their number
                # follow the free disk (0), or a session's buckets run out of volumes ("InternalError").
                "-volume.max=0", "-master.volumeSizeLimitMB=64",
                "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={free_port()}", f"-s3.config={config}"]
        log = open(self.workdir / "weed.log", "wb")  # noqa: SIM115 - the server writes to it until stop()
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.client().list_buckets()
                return self
            except Exception:  # not up yet: the S3 gateway waits for the filer, which waits for the master
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 did not answer in 90 s: {self.log_tail()}")

    def log_tail(self) -> str:
        return (self.workdir / "weed.log").read_text(errors="replace")[-3000:]

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint(), region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix`` and its size."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return found

    def download(self, bucket: str, prefix: str, folder: Path) -> Path:
        """Every object under ``prefix`` into ``folder``, as a server would fetch an adapter."""
        s3 = self.client()
        for key in self.objects(bucket, prefix):
            target = folder / key.removeprefix(prefix).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
        return folder

    def check_against_manifest(self, bucket: str, prefix: str) -> dict:
        """The manifest.json under ``prefix``, after checking that every file it lists is there with its size and
        SHA-256; returns it."""
        s3 = self.client()
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
        for entry in manifest["files"]:
            data = s3.get_object(Bucket=bucket, Key=f"{prefix}/{entry['path']}")["Body"].read()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"]), entry["path"]
        return manifest

    def stop(self) -> None:
        if self.proc:
            terminate_group(self.proc, grace=20)

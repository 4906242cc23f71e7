"""A real OCI registry: Debian's docker-registry (CNCF distribution 2.8) on this host; never a mock of a registry.

Two uses. The artifact tests run one with htpasswd basic auth on every address (plain HTTP: a test registry),
so the trainer reaches it at 127.0.0.1 as a process-node pod and at the real node's bridge address from a
container; ``docker_config(host)`` is the content of a kubernetes.io/dockerconfigjson Secret for it and
``pull(...)`` fetches an artifact back with an OCI client (oras-py), as a user would. The real node runs one
without auth on loopback, with its storage in the cache, for the project's images: build_images.sh pushes
them there and the node's containerd pulls them, as a cluster pulls from its registry.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
from pathlib import Path

import oras.provider
import requests

from tests.cluster.controlplane import free_port, terminate_group
from tests.cluster.debian import ensure_host_packages

PACKAGES = ("docker-registry", "apache2-utils")  # the registry, and htpasswd for its bcrypt password file


class Registry:
    def __init__(self, workdir: Path, storage: Path | None = None, auth: bool = True, bind: str = "0.0.0.0",
                 port: int = 0) -> None:
        """``storage``: where the blobs live (default: under ``workdir``); ``auth``: htpasswd basic auth;
        ``port``: the one to use when it is free (default: any free one)."""
        self.workdir = workdir
        self.storage = storage or workdir / "data"
        self.auth, self.bind = auth, bind
        self.user, self.password = "lora-tests", secrets.token_hex(12)
        self.port = free_port(port)
        self.proc: subprocess.Popen[bytes] | None = None

    def host(self, address: str = "127.0.0.1") -> str:
        return f"{address}:{self.port}"

    def start(self) -> Registry:
        ensure_host_packages(PACKAGES if self.auth else PACKAGES[:1])
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        settings: dict = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": f"{self.bind}:{self.port}", "secret": secrets.token_hex(16)},
        }
        if self.auth:
            htpasswd = subprocess.run(["htpasswd", "-Bbn", self.user, self.password], check=True,
                                      capture_output=True, text=True).stdout
            (self.workdir / "htpasswd").write_text(htpasswd)
            settings["auth"] = {"htpasswd": {"realm": "lora-tests", "path": str(self.workdir / "htpasswd")}}
        config = self.workdir / "config.yml"
        config.write_text(json.dumps(settings))  # YAML is a superset of JSON
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115 - the registry writes to it until stop()
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()[-2000:]}")
            try:
                status = requests.get(f"http://{self.host()}/v2/", timeout=2).status_code
                if status == (401 if self.auth else 200):  # up (and asks for auth when it should)
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("docker-registry did not answer in 60 s")

    def docker_config(self, address: str = "127.0.0.1", password: str | None = None) -> str:
        """A .dockerconfigjson for the registry as reached at ``address`` (``password``: a wrong one)."""
        login = f"{self.user}:{password or self.password}"
        return json.dumps({"auths": {self.host(address): {"auth": base64.b64encode(login.encode()).decode()}}})

    def pull(self, reference: str, folder: Path) -> list[Path]:
        """``reference`` (host/repository:tag or @digest) pulled with oras-py into ``folder``; the files it wrote."""
        client = oras.provider.Registry(hostname=self.host(), insecure=True, auth_backend="basic")
        client.auth.set_basic_auth(self.user, self.password)
        return [Path(p) for p in client.pull(target=reference, outdir=str(folder))]

    def manifest(self, repository: str, reference: str) -> tuple[bytes, dict]:
        """The manifest as the registry serves it (bytes, parsed)."""
        response = requests.get(f"http://{self.host()}/v2/{repository}/manifests/{reference}", timeout=10,
                                auth=(self.user, self.password),
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        response.raise_for_status()
        return response.content, response.json()

    def stop(self) -> None:
        if self.proc:
            terminate_group(self.proc, grace=10)

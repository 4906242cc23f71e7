"""Debian packages the real parts need (containerd, docker-registry, ...), installed with apt on first use.

Its own module because the node (realnode.py) and the registry (registry.py) both install packages and
the node starts a registry.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence

log = logging.getLogger("debian")


def ensure_host_packages(packages: Sequence[str]) -> None:
    """Install the Debian ``packages`` that are missing (once per machine)."""
    def installed(package: str) -> bool:  # not `dpkg -s`: it succeeds for a removed package's leftover config
        status = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package], capture_output=True,
                                text=True, check=False)
        return status.stdout.strip() == "installed"

    missing = [p for p in packages if not installed(p)]
    if not missing:
        return
    log.info("installing %s", " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True,
                   capture_output=True, env=env)

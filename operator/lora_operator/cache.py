"""What ``sync`` reads instead of the API: the runs, Jobs and Pods the operator's watches deliver.

Why: reading the run, its Job and its pods for every sync cost 3 requests per run per timer tick, so an
idle operator's load on the apiserver grew with the number of runs (docs/operator-scale.md). Kopf
indices fed by the watches hold the objects; these functions pick from them and guard the two places
where a watch trailing the API would mislead:

- the operator's own status writes: the next sync must start from what it wrote, not from the older
  copy the watch has not delivered yet (it would post the same Events and writes again), so each
  write's response is kept until the watch catches up (``WrittenRuns``);
- a Job missing from the cache: a Job named in the status and missing reads as deleted
  (``status.job_gone``, which ends the run for good), so a miss is only believed after a direct read
  (``sync`` in ``handlers``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on the pods it makes


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy without ``managedFields``: nothing here reads them, and they are most of an object's
    size (memory per run)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {**body, "metadata": meta}


def pick(objects: Iterable[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The live object among those cached under one name: a deleted run or Job may linger beside its
    recreated namesake until its deletion finishes."""
    found = list(objects or ())  # one C-level copy: kopf may add to the store from the event loop meanwhile
    live = [o for o in found if not o["metadata"].get("deletionTimestamp")]
    return max(live or found, key=lambda o: o["metadata"].get("creationTimestamp") or "", default=None)


def _version(obj: Mapping[str, Any]) -> int:
    # kube-apiserver's resourceVersions are etcd revisions: integers that grow with every write.
    return int(obj["metadata"]["resourceVersion"])


class WrittenRuns:
    """The response to the operator's latest status write of each run, until the watch delivers that
    version or a newer one. Thread-safe: the status writer's thread and Kopf's executor both write."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def remember(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self._lock:
            held = self._objects.get(key)
            if held is None or held["metadata"]["uid"] != obj["metadata"]["uid"] or _version(obj) > _version(held):
                self._objects[key] = slim(obj)

    def newest(self, watched: dict[str, Any]) -> dict[str, Any]:
        """``watched`` unless a write of the same run is newer than it; a write the watch has caught up
        with (or of a run since deleted and recreated) is dropped."""
        key = (watched["metadata"]["namespace"], watched["metadata"]["name"])
        with self._lock:
            written = self._objects.get(key)
            if written is None:
                return watched
            if written["metadata"]["uid"] == watched["metadata"]["uid"] and _version(written) > _version(watched):
                return written
            del self._objects[key]
            return watched

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace, name), None)

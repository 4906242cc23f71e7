"""A local-path provisioner: binds Pending PersistentVolumeClaims to hostPath PVs on one node.

Both test nodes need one (the scheduler places no pod whose claims are unbound, and a bare
cluster has no StorageClass). Like rancher's local-path-provisioner, each volume is a folder
on the node, world-writable, so a non-root pod can write to it whatever its fsGroup (hostPath
volumes are never chowned by the kubelet); Released volumes are deleted with their data.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kubernetes import client

PV_LABEL = "lora-test/provisioned-by-node"

log = logging.getLogger("provisioner")


def _items(resp: Any) -> list[dict[str, Any]]:
    return json.loads(resp.data)["items"]


def provision(core: client.CoreV1Api, node_name: str, volumes_dir: Path) -> None:
    """Bind Pending claims to new hostPath PVs under ``volumes_dir``; delete our Released PVs and their dirs."""
    for pvc in _items(core.list_persistent_volume_claim_for_all_namespaces(_preload_content=False)):
        meta, spec = pvc["metadata"], pvc["spec"]
        if pvc.get("status", {}).get("phase") != "Pending" or spec.get("volumeName") or meta.get("deletionTimestamp"):
            continue
        pv_name = f"pvc-{meta['uid']}"
        path = volumes_dir / pv_name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        on_this_node = client.V1NodeSelectorRequirement(key="kubernetes.io/hostname", operator="In", values=[node_name])
        pv = client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=pv_name, labels={PV_LABEL: node_name}),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
                access_modes=spec.get("accessModes") or ["ReadWriteOnce"],
                volume_mode=spec.get("volumeMode", "Filesystem"),
                storage_class_name=spec.get("storageClassName") or "",
                persistent_volume_reclaim_policy="Retain",  # we delete it (and its dir) once Released
                claim_ref=client.V1ObjectReference(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"]),
                host_path=client.V1HostPathVolumeSource(path=str(path), type="Directory"),
                node_affinity=client.V1VolumeNodeAffinity(
                    required=client.V1NodeSelector(
                        node_selector_terms=[client.V1NodeSelectorTerm(match_expressions=[on_this_node])]
                    )
                ),
            ),
        )
        try:
            core.create_persistent_volume(pv)
            log.info("pvc %s/%s: provisioned %s", meta["namespace"], meta["name"], pv_name)
        except client.ApiException as e:
            if e.status != 409:
                raise
    for pv in _items(core.list_persistent_volume(label_selector=f"{PV_LABEL}={node_name}", _preload_content=False)):
        if pv.get("status", {}).get("phase") == "Released":
            core.delete_persistent_volume(pv["metadata"]["name"])
            shutil.rmtree(pv["spec"]["hostPath"]["path"], ignore_errors=True)

"""Pure builders: a validated spec in, the Kubernetes objects of one training run out.

No API calls here, so every manifest is unit-tested without a cluster. The handlers add
owner references (``kopf.adopt``) and create what these functions return.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lora_contract import api
from lora_contract.wire import (
    CONFIGMAP_DIR,
    CONFIGMAP_DIR_ENV,
    DESTINATION_SECRETS_DIR,
    DESTINATION_SECRETS_ENV,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    GATHER_PORT,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NNODES_ENV,
    NODE_RANK_ENV,
    NPROC_PER_NODE_ENV,
    OUTPUT_URI_ENV,
    RENDEZVOUS_PORT,
    REPORT_CA_ENV,
    REPORT_TOKEN_ENV,
    REPORT_URL_ENV,
    TOKEN_FILE,
    TOKEN_MOUNT,
    destination_secret_keys,
)

MANAGED_BY = "lora-operator"
JOB_LABEL = f"{api.GROUP}/job"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # on each pod of an Indexed Job (several pods)
CONTAINER = "trainer"

SPEC_MOUNT = "/etc/lora/spec"
PROGRESS_CA_KEY = "progress-ca.crt"
OUTPUT_MOUNT = "/output"
TERMINATION_LOG = "/dev/termination-log"
DEFAULT_TLS_DIR = "/etc/lora-operator/tls"
# The trainer's token is good for the progress endpoint only (its audience), and briefly: the kubelet
# renews it at 80% of its life; 600 s is the shortest the API allows.
TOKEN_AUDIENCE = "lora-operator"
TOKEN_TTL_SECONDS = 600


@dataclass(frozen=True)
class OperatorConfig:
    """Cluster-wide trainer defaults, set by the Helm chart through environment variables."""

    trainer_image: str = "ghcr.io/lora-operator/lora-trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    # For runs that ask for GPUs: the RuntimeClass whose handler exposes them (e.g. nvidia), where the
    # NVIDIA container runtime is not the nodes' default. CPU runs get none: their nodes may lack the handler.
    gpu_runtime_class: str = ""
    run_as_user: int = 1000
    # Secrets to pull a trainer image from a private registry, by name, in each run's namespace.
    image_pull_secrets: list[str] = field(default_factory=list)
    # On each run's ServiceAccount, e.g. a cloud workload identity to read models from a bucket.
    service_account_annotations: dict[str, str] = field(default_factory=dict)
    # Where trainers POST progress (the operator's Service), and the CA that signed its certificate.
    progress_url: str = ""
    progress_ca: str = ""
    # Images whose runs earn XP (the operator trusts their reports); default: the trainer image.
    trusted_images: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ) if env is None else env
        default = cls()
        return cls(
            trainer_image=env.get("LORA_TRAINER_IMAGE", default.trainer_image),
            image_pull_policy=env.get("LORA_TRAINER_IMAGE_PULL_POLICY", default.image_pull_policy),
            node_selector=json.loads(env.get("LORA_TRAINER_NODE_SELECTOR", "{}")),
            tolerations=json.loads(env.get("LORA_TRAINER_TOLERATIONS", "[]")),
            gpu_runtime_class=env.get("LORA_TRAINER_GPU_RUNTIME_CLASS", default.gpu_runtime_class),
            run_as_user=int(env.get("LORA_TRAINER_RUN_AS_USER", default.run_as_user)),
            image_pull_secrets=json.loads(env.get("LORA_TRAINER_IMAGE_PULL_SECRETS", "[]")),
            service_account_annotations=json.loads(env.get("LORA_TRAINER_SERVICE_ACCOUNT_ANNOTATIONS", "{}")),
            progress_url=env.get("LORA_PROGRESS_URL", "").rstrip("/"),
            progress_ca=_read(Path(env.get("LORA_PROGRESS_TLS_DIR", DEFAULT_TLS_DIR)) / "ca.crt"),
            trusted_images=tuple(json.loads(env.get("LORA_TRUSTED_TRAINER_IMAGES", "[]"))
                                 or [env.get("LORA_TRAINER_IMAGE", default.trainer_image)]),
        )

    def untrusted_image(self, image: str | None) -> str | None:
        """A run's image (``spec.image``, None for the default) if its reports earn no XP, else None."""
        image = image or self.trainer_image
        return None if image in self.trusted_images else image


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


# The CRD limits metadata.name to MAX_NAME_LENGTH so that every child name below stays a
# valid DNS label (63): the Job controller copies the Job name into a pod label.
MAX_NAME_LENGTH = 56


def job_name(resource_name: str) -> str:
    return f"{resource_name}-train"


def spec_configmap_name(resource_name: str) -> str:
    return f"{resource_name}-spec"


def service_account_name(resource_name: str) -> str:
    return f"{resource_name}-trainer"


def labels(resource_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lora-trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_LABEL: resource_name,
    }


def spec_yaml(spec: api.LoraTrainingJobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(by_alias=True, exclude_none=True, mode="json"), sort_keys=False)


def spec_configmap(name: str, spec: api.LoraTrainingJobSpec, cfg: OperatorConfig) -> dict[str, Any]:
    """The spec the trainer runs, frozen at creation (later edits do not reach a running Job), and the CA
    that lets the trainer verify the operator's progress endpoint."""
    data = {"spec.yaml": spec_yaml(spec)}
    if cfg.progress_ca:
        data[PROGRESS_CA_KEY] = cfg.progress_ca
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec_configmap_name(name), "labels": labels(name)},
        "data": data,
    }


def report_url(name: str, namespace: str, cfg: OperatorConfig) -> str:
    return f"{cfg.progress_url}/v1/namespaces/{namespace}/{api.PLURAL}/{name}/report"


def service_account(name: str, cfg: OperatorConfig) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": service_account_name(name), "labels": labels(name)}
    if cfg.service_account_annotations:
        metadata["annotations"] = dict(cfg.service_account_annotations)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        "automountServiceAccountToken": False,
    }


def output_dir(name: str, namespace: str, spec: api.LoraTrainingJobSpec) -> str:
    """Where the run writes inside the container; the whole PVC is mounted at OUTPUT_MOUNT."""
    sub_path = spec.output.sub_path if spec.output.sub_path is not None else f"{namespace}/{name}"
    return f"{OUTPUT_MOUNT}/{sub_path.strip('/')}".rstrip("/")


def _volumes(name: str, spec: api.LoraTrainingJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": spec_configmap_name(name)}},
        {"name": "tmp", "emptyDir": {}},
        {
            # Good only for the operator's progress endpoint: no RBAC is bound to the run's ServiceAccount.
            "name": "report-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "path": "token", "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_TTL_SECONDS}}]},
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "report-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
    ]
    if spec.resources.gpu > 1:
        # One trainer process per GPU (torchrun's DDP): NCCL moves tensors between them through /dev/shm,
        # which is 64 MiB in a container; memory-backed, it counts against the pod's memory limit.
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if spec.output.claim_name:
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": spec.output.claim_name}})
    else:
        volumes.append({"name": "output", "emptyDir": {}})
    mounts.append({"name": "output", "mountPath": OUTPUT_MOUNT})

    seen_cms: set[str] = set()
    for ds in spec.datasets:
        if ds.config_map and ds.config_map.name not in seen_cms:
            seen_cms.add(ds.config_map.name)
            vol = f"dataset-{hashlib.sha256(ds.config_map.name.encode()).hexdigest()[:10]}"
            # Optional: a missing ConfigMap would otherwise hold the pod (and its GPU) in ContainerCreating
            # until the deadline; mounted empty, the trainer fails at once naming the ConfigMap (exit code 2).
            volumes.append({"name": vol, "configMap": {"name": ds.config_map.name, "optional": True}})
            mounts.append({"name": vol, "mountPath": f"{CONFIGMAP_DIR}/{ds.config_map.name}",
                           "readOnly": True})
    # The destinations' Secrets, each in <dir>/<index>/, one file per key. Optional, like the dataset ConfigMaps:
    # a missing Secret fails the run in step 3 with its name, instead of holding the pod in ContainerCreating.
    # Only the keys the trainer reads are projected.
    secrets = [{"secret": {"name": d.credentials_secret, "optional": True,
                           "items": [{"key": k, "path": f"{i}/{k}"} for k in destination_secret_keys(d.uri)]}}
               for i, d in enumerate(spec.output.destinations) if d.credentials_secret]
    if secrets:
        volumes.append({"name": "destinations", "projected": {"defaultMode": 0o440, "sources": secrets}})
        mounts.append({"name": "destinations", "mountPath": DESTINATION_SECRETS_DIR, "readOnly": True})
    for vm in spec.volumes:
        volumes.append({"name": f"user-{vm.name}"[:63],
                        "persistentVolumeClaim": {"claimName": vm.claim_name, "readOnly": vm.read_only}})
        mounts.append({"name": f"user-{vm.name}"[:63], "mountPath": vm.mount_path, "readOnly": vm.read_only})
    return volumes, mounts


def _env(name: str, namespace: str, spec: api.LoraTrainingJobSpec, cfg: OperatorConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if cfg.progress_url:
        env += [{"name": REPORT_URL_ENV, "value": report_url(name, namespace, cfg)},
                {"name": REPORT_TOKEN_ENV, "value": TOKEN_FILE}]
        if cfg.progress_ca:
            env.append({"name": REPORT_CA_ENV, "value": f"{SPEC_MOUNT}/{PROGRESS_CA_KEY}"})
    env += [
        {"name": "LORA_TERMINATION_MESSAGE_PATH", "value": TERMINATION_LOG},
        {"name": CONFIGMAP_DIR_ENV, "value": CONFIGMAP_DIR},
        {"name": "HOME", "value": "/tmp"},
        # On the output volume: hub downloads survive retries and are shared by runs using the PVC.
        {"name": "HF_HOME", "value": f"{OUTPUT_MOUNT}/.cache/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if any(d.credentials_secret for d in spec.output.destinations):
        env.append({"name": DESTINATION_SECRETS_ENV, "value": DESTINATION_SECRETS_DIR})
    if spec.output.claim_name:  # the adapter's address for a server mounting the same volume (docs/serving.md)
        sub_path = output_dir(name, namespace, spec).removeprefix(OUTPUT_MOUNT)
        env.append({"name": OUTPUT_URI_ENV, "value": f"pvc://{spec.output.claim_name}{sub_path}"})
    secret = spec.evaluation.grader.api_key_secret
    if spec.evaluation.grader.type == "llmJudge" and secret:
        env.append({"name": "LORA_JUDGE_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    if spec.hub_token_secret:
        token = spec.hub_token_secret
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    return env + _group_env(name, namespace, spec)


def _group_env(name: str, namespace: str, spec: api.LoraTrainingJobSpec) -> list[dict[str, Any]]:
    """torchrun's settings for a run over several pods: each pod's node rank is its completion index, and pod
    index 0 (rank 0) is reachable at a stable name through the headless Service (``workers_service``)."""
    if spec.resources.nodes == 1:
        return []
    job = job_name(name)
    return [
        {"name": NNODES_ENV, "value": str(spec.resources.nodes)},
        {"name": NPROC_PER_NODE_ENV, "value": str(max(1, spec.resources.gpu))},
        {"name": NODE_RANK_ENV, "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": MASTER_ADDR_ENV, "value": f"{job}-0.{job}.{namespace}.svc"},
        {"name": MASTER_PORT_ENV, "value": str(RENDEZVOUS_PORT)},
    ]


def runs_rank_0(annotations: dict[str, str] | None) -> bool:
    """Whether a pod runs global rank 0, the trainer that reports and writes the summary: any pod of a one-pod
    run; pod 0 of a run over several pods (the others train only)."""
    return (annotations or {}).get(COMPLETION_INDEX, "0") == "0"


def reporting_run(labels: dict[str, str] | None, annotations: dict[str, str] | None) -> str | None:
    """The run a pod may report progress for: its run label, if it runs rank 0 (``runs_rank_0``)."""
    return (labels or {}).get(JOB_LABEL) if runs_rank_0(annotations) else None


def workers_service(name: str) -> dict[str, Any]:
    """The headless Service of a run over several pods: it gives each pod of the Indexed Job a DNS name
    (``<job>-<index>.<job>``), so the others find rank 0's before it is Ready (publishNotReadyAddresses)."""
    job = job_name(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": job, "labels": labels(name)},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"batch.kubernetes.io/job-name": job},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT},
                           {"name": "gather", "port": GATHER_PORT, "targetPort": GATHER_PORT}]},
    }


def _scheduling(spec: api.LoraTrainingJobSpec, cfg: OperatorConfig) -> dict[str, Any]:
    res = spec.resources
    node_selector = {**cfg.node_selector, **res.node_selector}
    if res.gpu_type:
        node_selector["nvidia.com/gpu.product"] = res.gpu_type
    tolerations = [*cfg.tolerations, *(t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations)]
    if res.gpu > 0 and not any(t.get("key") == res.gpu_resource_name for t in tolerations):
        # GPU nodes are commonly tainted with their resource name so only GPU pods land there.
        tolerations.append({"key": res.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"})
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if spec.runtime.priority_class_name:
        out["priorityClassName"] = spec.runtime.priority_class_name
    runtime_class = res.runtime_class_name or (cfg.gpu_runtime_class if res.gpu > 0 else "")
    if runtime_class:
        out["runtimeClassName"] = runtime_class
    return out


def _resources(spec: api.LoraTrainingJobSpec) -> dict[str, Any]:
    """Memory limit = request (an OOM kill, not a node's memory pressure, ends a run that outgrows it); no CPU
    limit, since CFS throttling slows the data loader and the training threads while cores sit idle."""
    res = spec.resources
    amounts: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits = {"memory": res.memory}
    if res.gpu > 0:
        # Extended resources must have requests == limits.
        amounts[res.gpu_resource_name] = str(res.gpu)
        limits[res.gpu_resource_name] = str(res.gpu)
    return {"requests": amounts, "limits": limits}


def job(name: str, namespace: str, spec: api.LoraTrainingJobSpec, cfg: OperatorConfig) -> dict[str, Any]:
    """The batch/v1 Job running the trainer for resource ``name``."""
    volumes, mounts = _volumes(name, spec)
    job_labels = labels(name)
    if spec.queue_name:
        job_labels["kueue.x-k8s.io/queue-name"] = spec.queue_name
    container = {
        "name": CONTAINER,
        "image": spec.image or cfg.trainer_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["lora-trainer", "run", f"{SPEC_MOUNT}/spec.yaml", "--output", output_dir(name, namespace, spec)],
        "env": _env(name, namespace, spec, cfg),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.runtime.termination_grace_period_seconds,
        "serviceAccountName": service_account_name(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_user,
            "fsGroup": cfg.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
        **_scheduling(spec, cfg),
    }
    if cfg.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in cfg.image_pull_secrets]
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.runtime.backoff_limit,
        "activeDeadlineSeconds": spec.runtime.active_deadline_seconds,
        # Kueue admits a queued Job by unsuspending it.
        "suspend": spec.suspend or bool(spec.queue_name),
        "podFailurePolicy": {
            "rules": [
                # An invalid spec or dataset: retrying cannot help.
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID_INPUT]}},
                # Stopped by SIGTERM (a pod deleted by hand too, which sets no DisruptionTarget) after saving a
                # checkpoint: a disruption, not a failure. The retry resumes there and costs no backoffLimit.
                {"action": "Ignore",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INTERRUPTED]}},
                # Evicted, preempted, a node shutting down or gone (whatever the container's exit).
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": {"labels": labels(name)}, "spec": pod_spec},
    }
    if spec.resources.nodes > 1:
        # One pod per node, all at once (Kueue admits the pod set as one workload); each pod's index is its node
        # rank, its hostname <job>-<index> under the Service's subdomain.
        nodes = spec.resources.nodes
        job_spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes})
        pod_spec["subdomain"] = job_name(name)
        # A worker that died outright (killed, out of memory, a lost node) breaks the group: its peers fail too,
        # or hang in a collective. Fail the whole Job at once, rather than let the Job replace pods one by one
        # into a half-dead group; the operator then restarts the group from its newest checkpoint
        # (status.group_restart).
        job_spec["podFailurePolicy"]["rules"].append(
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}})
    if spec.runtime.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.runtime.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(name), "labels": job_labels},
        "spec": job_spec,
    }


def children(
    name: str, namespace: str, spec: api.LoraTrainingJobSpec, cfg: OperatorConfig
) -> list[dict[str, Any]]:
    """Everything one run needs, in creation order (the Job last: it needs the rest)."""
    return [
        service_account(name, cfg),
        spec_configmap(name, spec, cfg),
        *([workers_service(name)] if spec.resources.nodes > 1 else []),
        job(name, namespace, spec, cfg),
    ]

"""The operator's Kubernetes API calls, in one small adapter: the controllers decide, this reads and writes.

One ``ApiClient`` (so one connection pool) for every call: a new one per call costs a TCP and TLS handshake
each time, which under load was a third of the operator's busy time. Tests give the controllers a fake with
the same methods instead of patching module globals."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import kopf
import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from lora_contract import api, minion
from lora_operator import builders, cache


class ChildRejected(Exception):
    """The apiserver refused a child built from this spec as invalid: retrying the same spec cannot help."""


class NamespaceTerminating(kopf.TemporaryError):
    """The namespace is being deleted, and the run with it: nothing can be created there any more. Retried like
    any temporary refusal (a namespace is never un-deleted, so the retry ends with the run), but not an error
    worth a warning each time."""


def _none_if_missing(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


class Kube:
    """The calls the run and minion controllers make."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> Kube:
        """In a pod: its ServiceAccount (without load_config()'s warning that no ~/.kube/config exists);
        elsewhere $KUBECONFIG or ~/.kube/config."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.client)

    def _plain(self, obj: Any) -> Any:
        return self.client.sanitize_for_serialization(obj)

    # --- runs ------------------------------------------------------------------------------------
    def read_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_if_missing(self.custom().get_namespaced_custom_object, api.GROUP, api.VERSION, namespace,
                                api.PLURAL, name)

    def patch_run_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom().patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch})

    def frozen_spec(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The spec a run started with, from its ConfigMap; None when it has none (it never started)."""
        found = _none_if_missing(kubernetes.client.CoreV1Api(self.client).read_namespaced_config_map,
                                 builders.spec_configmap_name(name), namespace)
        return yaml.safe_load(found.data["spec.yaml"]) if found else None

    # --- minions ---------------------------------------------------------------------------------
    def read_minion(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_if_missing(self.custom().get_namespaced_custom_object, api.GROUP, api.VERSION, namespace,
                                minion.PLURAL, name)

    def replace_minion_status(self, found: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """``status`` as the minion's, at the resourceVersion of ``found``: 409 when it changed since."""
        meta = found["metadata"]
        body = {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": minion.KIND,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "resourceVersion": meta["resourceVersion"]},
                "spec": found["spec"], "status": status}
        return self.custom().replace_namespaced_custom_object_status(
            api.GROUP, api.VERSION, meta["namespace"], minion.PLURAL, meta["name"], body)

    # --- Jobs and pods ---------------------------------------------------------------------------
    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = _none_if_missing(kubernetes.client.BatchV1Api(self.client).read_namespaced_job, name, namespace)
        return self._plain(found) if found else None

    def list_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self._plain(kubernetes.client.CoreV1Api(self.client).list_namespaced_pod(
            namespace, label_selector=f"{cache.JOB_NAME_LABEL}={job}").items)

    def suspend_job(self, namespace: str, job: str, suspend: bool) -> None:
        kubernetes.client.BatchV1Api(self.client).patch_namespaced_job(job, namespace, {"spec": {"suspend": suspend}})

    def delete_job(self, namespace: str, job: str) -> None:
        """Its pods first (foreground): the pods of a Job created again take their names."""
        batch = kubernetes.client.BatchV1Api(self.client)
        _none_if_missing(lambda: batch.delete_namespaced_job(job, namespace, propagation_policy="Foreground"))

    def pod_run(self, namespace: str, pod: str) -> str | None:
        """The run a pod may report for (``builders.reporting_run``), read when the watch has not shown it."""
        found = _none_if_missing(kubernetes.client.CoreV1Api(self.client).read_namespaced_pod, pod, namespace)
        return builders.reporting_run(found.metadata.labels, found.metadata.annotations) if found else None

    def token_review(self, token: str) -> dict[str, Any]:
        body = kubernetes.client.V1TokenReview(
            spec=kubernetes.client.V1TokenReviewSpec(token=token, audiences=[builders.TOKEN_AUDIENCE]))
        return self._plain(kubernetes.client.AuthenticationV1Api(self.client).create_token_review(body))

    # --- any child -------------------------------------------------------------------------------
    def create(self, obj: dict[str, Any], namespace: str, owner_uid: str) -> None:
        """Create, or accept an existing object we own: an operator restart creates nothing twice."""
        try:
            kubernetes.utils.create_from_dict(self.client, obj, namespace=namespace)
        except kubernetes.utils.FailToCreateError as err:
            exc = err.api_exceptions[0]
            if exc.status == 422:
                try:
                    detail = json.loads(exc.body).get("message") or exc.body
                except (TypeError, ValueError):
                    detail = exc.body
                raise ChildRejected(f"the {obj['kind']} built from this spec is invalid: {detail}") from err
            if exc.status == 403 and "NamespaceTerminating" in str(exc.body):  # the Status's details.causes
                raise NamespaceTerminating(f"namespace {namespace} is being deleted", delay=10) from err
            if exc.status != 409:
                raise kopf.TemporaryError(f"creating {obj['kind']} {obj['metadata']['name']}: {exc.reason}: "
                                          f"{exc.body}", delay=10) from err
            existing = self._read(obj, namespace)
            owners = [o.get("uid") for o in existing.get("metadata", {}).get("ownerReferences") or []]
            if owner_uid not in owners:
                raise kopf.TemporaryError(
                    f"{obj['kind']} {obj['metadata']['name']} exists and belongs to another owner "
                    "(a deleted run with the same name is still being cleaned up)", delay=15) from err

    @functools.cached_property
    def _dynamic(self) -> kubernetes.dynamic.DynamicClient:
        # Built once: constructing it runs API discovery, several requests.
        return kubernetes.dynamic.DynamicClient(self.client)

    def _read(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        resource = self._dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        return resource.get(name=obj["metadata"]["name"], namespace=namespace).to_dict()

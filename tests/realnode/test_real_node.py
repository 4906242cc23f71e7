"""What only a real node shows: the chart's operator image in-cluster, the quickstart in the trainer image,
a real OOM kill, and a Job retry resuming from its checkpoint on a PVC after the pod is deleted.

Nothing here is emulated: containerd + runc run the images built from operator/Dockerfile and
trainer-image/Dockerfile, the kubelet enforces runAsNonRoot, readOnlyRootFilesystem and memory
limits, and the operator reaches the apiserver through kube-proxy's `kubernetes` Service.
The one thing no node here has is a GPU: the node advertises `nvidia.com/gpu` as an extended
resource, and these runs ask for none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, StatusRecorder, assert_succeeded_with_results, pvc, wait_for
from tests.realnode.conftest import RELEASE_NAMESPACE

pytestmark = [pytest.mark.integration, pytest.mark.realnode]


def _run(name: str, claim: str, **overrides) -> dict:
    """A small SmolLM2 run on the quickstart's model and data (the model ships in the trainer image)."""
    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text().split("---")[1])["spec"]
    spec.update({"output": {"claimName": claim}, "evaluation": {"heldOutItems": 2, "generation": {"maxNewTokens": 8}}})
    spec.update(overrides)
    return {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob", "metadata": {"name": name},
            "spec": spec}


def _claim(rk, namespace: str, name: str) -> Path:
    rk.apply(pvc(name, "5Gi"), namespace)
    return rk.bound_dir(namespace, name)


def _pods(rk, namespace: str, run: str) -> list[dict]:
    return yaml.safe_load(rk("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={run}-train",
                             "-o", "yaml"))["items"]


def test_the_chart_runs_the_operator_image_under_its_service_account(rk, operator_release, real_cluster):
    pod = rk.get("pod", operator_release, RELEASE_NAMESPACE)
    assert pod["spec"]["serviceAccountName"] == "lora-operator"
    assert pod["spec"]["containers"][0]["image"] == real_cluster.images["OPERATOR_IMAGE"]
    assert pod["spec"]["nodeName"] == real_cluster.node_name
    # The kubelet checked the image's numeric USER against runAsNonRoot before starting it.
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["state"].get("running"), status
    logs = rk("logs", "-n", RELEASE_NAMESPACE, operator_release)  # through the kubelet's API
    assert "Initial authentication has finished" in logs and "kube_config_path" not in logs, logs[-2000:]


def test_services_and_cluster_dns_work_from_a_pod(rk, real_cluster, real_namespace):
    """CoreDNS answers a Service name and kube-proxy routes its ClusterIP to the apiserver."""
    probe = ("import json, socket, ssl, urllib.request; "
             "ip = socket.gethostbyname('kubernetes.default.svc.cluster.local'); "
             "ctx = ssl._create_unverified_context(); "
             "v = json.load(urllib.request.urlopen('https://kubernetes.default.svc/version', context=ctx)); "
             "print(ip, v['gitVersion'])")
    rk.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
        "containers": [{"name": "probe", "image": real_cluster.images["OPERATOR_IMAGE"],
                        "imagePullPolicy": "IfNotPresent", "command": ["python3", "-c", probe]}]}}, real_namespace)
    phase = wait_for("the probe pod to finish", lambda: (p := rk("get", "pod", "probe", "-n", real_namespace, "-o",
                     "jsonpath={.status.phase}")) in ("Succeeded", "Failed") and p, timeout=120)
    logs = rk("logs", "probe", "-n", real_namespace)
    assert phase == "Succeeded", logs
    ip, version = logs.split()[:2]
    assert ip == "10.0.0.1" and version.startswith("v1."), logs


@pytest.mark.e2e
def test_quickstart_in_the_trainer_image_reaches_succeeded_with_live_columns(rk, operator_release, real_namespace):
    """`kubectl apply -f examples/quickstart.yaml`, as a user does after `helm install`."""
    recorder = StatusRecorder(rk, real_namespace, "quickstart")
    rk("apply", "-n", real_namespace, "-f", str(ROOT / "examples" / "quickstart.yaml"))
    recorder.start()
    recorder.join(timeout=1200)
    status = rk.status(real_namespace, "quickstart")
    print(rk("get", "loratrainingjobs", "-n", real_namespace))
    assert_succeeded_with_results(status, real_namespace, "quickstart")
    running = [s for s in recorder.seen if s["phase"] == "Running"]
    progresses = [s["progress"] for s in running if s["progress"] is not None]
    assert len(set(progresses)) >= 3 and progresses == sorted(progresses), recorder.seen
    assert any(s["loss"] is not None and s["stepSummary"].startswith("4/9") for s in running), recorder.seen
    trainer = status["trainer"]
    assert trainer["after"]["evalLoss"] < trainer["before"]["evalLoss"]
    # Written by the trainer's non-root user onto the claim, through the real mount.
    adapter = rk.bound_dir(real_namespace, "lora-artifacts") / real_namespace / "quickstart" / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_uid == 1000
    assert trainer["artifacts"]["adapter"] == f"/output/{real_namespace}/quickstart/adapter"
    # The kubelet read the trainer's summary from /dev/termination-log: the fallback when reports fail.
    terminated = _pods(rk, real_namespace, "quickstart")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert json.loads(terminated["message"])["trainItems"] == trainer["trainItems"]
    # The reports came over the progress Service (kube-proxy, CoreDNS, the chart's TLS Secret), not only at the
    # end: the operator logged none refused.
    logs = rk("logs", "-n", RELEASE_NAMESPACE, operator_release)
    assert "TokenReview failed" not in logs, logs[-2000:]


def test_a_memory_limit_too_small_ends_failed_with_reason_oomkilled(rk, operator_release, real_namespace):
    _claim(rk, real_namespace, "artifacts")
    run = _run("oom", "artifacts", resources={"gpu": 0, "cpu": "1", "memory": "160Mi"},
               runtime={"backoffLimit": 0})
    rk.apply(run, real_namespace)
    status = wait_for("the run to fail", lambda: (s := rk.status(real_namespace, "oom")).get("phase")
                      in ("Succeeded", "Failed") and s, timeout=300)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Failed" and ready["reason"] == "OOMKilled", status
    assert "exit code 137" in status["message"] and "spec.resources.memory" in status["message"]
    terminated = _pods(rk, real_namespace, "oom")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    rk.events(real_namespace, "oom", "OOMKilled")


def test_a_pod_deleted_mid_training_is_retried_and_resumes_from_its_checkpoint(rk, operator_release,
                                                                              real_namespace):
    volume = _claim(rk, real_namespace, "artifacts")
    rk.apply(_run("resume", "artifacts"), real_namespace)
    run_dir = volume / real_namespace / "resume"
    marker = wait_for("a complete checkpoint on the PVC",
                      lambda: next(iter(run_dir.glob("**/checkpoint-*/lora-trainer-complete.json")), None),
                      timeout=600, interval=1)
    first = _pods(rk, real_namespace, "resume")[0]["metadata"]["name"]
    rk("delete", "pod", first, "-n", real_namespace, "--wait=false")
    status = wait_for("the run to end", lambda: (s := rk.status(real_namespace, "resume")).get("phase")
                      in ("Succeeded", "Failed") and s, timeout=900, interval=2)
    assert status["phase"] == "Succeeded", status.get("message")
    pods = _pods(rk, real_namespace, "resume")
    assert first not in [p["metadata"]["name"] for p in pods] and len(pods) == 1
    training = next(s for s in status["trainer"]["steps"] if s["name"] == "training")
    # From the newest complete checkpoint when the first pod died: the one seen, or a later one the trainer
    # wrote before the kill landed (it trains 30 steps in about a minute and saves every 10).
    resumed = re.search(r"resumed from checkpoint-(\d+)", training["message"])
    assert resumed and int(resumed.group(1)) >= int(marker.parent.name.removeprefix("checkpoint-")), training

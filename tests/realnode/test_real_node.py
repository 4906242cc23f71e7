"""What only a real node shows: the chart's operator image in-cluster, the quickstart in the trainer image,
a real OOM kill, the trainer stopped by the kubelet's SIGTERM as a container's PID 1 (a pod deleted, a node
drained, a run deleted) and a Job retry resuming from the checkpoint it saved, and the operator pod stopping.

Nothing here is emulated: containerd + runc run the images built from operator/Dockerfile and
trainer-image/Dockerfile, the kubelet enforces runAsNonRoot, readOnlyRootFilesystem and memory
limits, and the operator reaches the apiserver through kube-proxy's `kubernetes` Service.
The one thing no node here has is a GPU: the node advertises `nvidia.com/gpu` as an extended
resource, and these runs ask for none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml

from lora_contract import api
from lora_trainer.checkpoints import MARKER
from lora_trainer.modeling import load_model
from tests.cluster.realnode import NODE_IP
from tests.conftest import ROOT, StatusRecorder, assert_succeeded_with_results, pvc, sigterm_pending, wait_for
from tests.faults.conftest import complete_checkpoints
from tests.realnode.conftest import RELEASE_NAMESPACE
from tests.trainer.test_destinations import assert_adapter_computes_the_merged_model
from tests.trainer.test_distributed import _finish
from tests.trainer.test_distributed import _run as _run_trainer

pytestmark = [pytest.mark.integration, pytest.mark.realnode]


def _run(name: str, claim: str, **overrides) -> dict:
    """A small SmolLM2 run on the quickstart's model and data (the model ships in the trainer image)."""
    spec = next(d for d in yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text())
                if d["kind"] == "LoraTrainingJob")["spec"]
    del spec["minion"]  # these runs are not for a minion (the quickstart's own test credits one)
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
    # Pulled from the node's registry (build_images.sh pushed it there), by the digest the registry serves.
    repository = real_cluster.images["OPERATOR_IMAGE"].rsplit(":", 1)[0]
    assert status["imageID"].startswith(f"{repository}@sha256:"), status["imageID"]
    assert repository.startswith(real_cluster.images["REGISTRY"] + "/"), repository
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
    # Credited to its minion, through the chart's RBAC (minions/status update).
    credited = wait_for("the quickstart credited to its minion", lambda: (s := rk.status(
        real_namespace, "quickstart")).get("credited") and s, timeout=60, interval=1)["credited"]
    minion = rk.get("minion", "scout", real_namespace)["status"]
    assert (credited["minion"], credited["xp"]) == ("scout", status["xp"])
    assert (minion["xp"], minion["runs"]) == (status["xp"], 1), minion
    assert minion["adapter"]["uri"] == trainer["artifacts"]["adapterUri"], minion
    print(rk("get", "minions", "-n", real_namespace))


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


def _host_pid(real_cluster, pod: dict) -> int:
    """The host PID of the pod's trainer, PID 1 of its container (containerd's task of that container)."""
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    for line in real_cluster.ctr("tasks", "ls").stdout.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == container:
            return int(pid)
    raise AssertionError(f"no containerd task for {container}")


def _running_pod(rk, namespace: str, run: str) -> dict:
    def running() -> dict | None:
        return next((p for p in _pods(rk, namespace, run) if p["status"].get("phase") == "Running"
                     and not p["metadata"].get("deletionTimestamp")
                     and (p["status"].get("containerStatuses") or [{}])[0].get("containerID")), None)
    return wait_for(f"a running {run} pod", running, timeout=600, interval=1)


@contextmanager
def _held(pid: int) -> Iterator[None]:
    """The trainer stopped (SIGSTOP from the host: the kernel delivers it even to a container's PID 1) inside
    the block, so a fault lands at the step where it was held however fast it trains."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _stop_at_sigterm(rk, real_cluster, namespace: str, run: str, run_dir: Path, fault) -> tuple[int, int, float]:
    """Hold the running trainer, inject ``fault`` (something that makes the kubelet send SIGTERM), release it
    once SIGTERM is pending; return the newest checkpoint before, the one SIGTERM saved, and the seconds from
    the fault to the pod gone."""
    pod = _running_pod(rk, namespace, run)
    pid = _host_pid(real_cluster, pod)
    with _held(pid):
        newest = complete_checkpoints(run_dir)[-1]
        reported = rk.status(namespace, run)["trainer"]["trainingStep"]
        started = time.monotonic()
        fault(pod["metadata"]["name"])
        wait_for("SIGTERM sent to the held trainer", lambda: sigterm_pending(pid), timeout=120, interval=0.05)
    wait_for("the pod gone", lambda: pod["metadata"]["name"] not in [p["metadata"]["name"] for p in _pods(
        rk, namespace, run)], timeout=300, interval=0.2)
    gone = time.monotonic() - started
    saved = [n for n in complete_checkpoints(run_dir) if n > newest]
    assert saved and saved[0] >= reported, (newest, reported, complete_checkpoints(run_dir))
    return newest, saved[0], gone


def test_pods_deleted_and_drained_mid_training_save_at_sigterm_and_the_retry_resumes_there(
        rk, real_cluster, operator_release, real_namespace):
    """`kubectl delete pod` (no DisruptionTarget: the exit code 143 tells the Job) and then `kubectl drain`
    (the eviction API) of the retry: each time the trainer finishes its optimizer step, saves it and exits in
    seconds; the Job's failed count stays 0 and each retry resumes from the step saved. Steps lost: 0."""
    volume = _claim(rk, real_namespace, "artifacts")
    rk.apply(_run("resume", "artifacts"), real_namespace)
    run_dir = volume / real_namespace / "resume"
    wait_for("a complete checkpoint on the PVC", lambda: complete_checkpoints(run_dir), timeout=600, interval=1)

    def delete(pod: str) -> None:
        rk("delete", "pod", pod, "-n", real_namespace, "--wait=false")  # the spec's grace period: 120 s

    _, deleted_at, deleted_s = _stop_at_sigterm(rk, real_cluster, real_namespace, "resume", run_dir, delete)
    wait_for("training past the resumed step", lambda: (rk.status(real_namespace, "resume").get("trainer") or {})
             .get("trainingStep", 0) > deleted_at, timeout=600, interval=1)
    drain: list[subprocess.Popen] = []

    def evict(_pod: str) -> None:
        drain.append(subprocess.Popen(
            [str(rk.cp.bin_dir / "kubectl"), "drain", real_cluster.node_name, "--ignore-daemonsets",
             "--delete-emptydir-data", "--timeout=300s", "--pod-selector=batch.kubernetes.io/job-name=resume-train"],
            env=rk.cp.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

    try:
        _, drained_at, drained_s = _stop_at_sigterm(rk, real_cluster, real_namespace, "resume", run_dir, evict)
        out, _ = drain[0].communicate(timeout=300)
        assert drain[0].returncode == 0, out
    finally:
        rk("uncordon", real_cluster.node_name)
    status = wait_for("the run to end", lambda: (s := rk.status(real_namespace, "resume")).get("phase")
                      in ("Succeeded", "Failed") and s, timeout=900, interval=2)
    assert status["phase"] == "Succeeded", status.get("message")
    training = next(s for s in status["trainer"]["steps"] if s["name"] == "training")
    assert f"resumed from checkpoint-{drained_at};" in training["message"], training
    assert deleted_at < drained_at
    job = rk.get("job", "resume-train", real_namespace)
    assert (job["status"].get("failed") or 0) == 0, job["status"]  # disruptions, not failures
    assert len(_pods(rk, real_namespace, "resume")) == 1
    print(f"MEASURED pod delete: SIGTERM checkpoint-{deleted_at}, pod gone {deleted_s:.1f} s after the delete; "
          f"drain: checkpoint-{drained_at}, pod gone {drained_s:.1f} s after the drain began")



def _workers(host_pid: int) -> list[int]:
    """The host pids of a launcher's worker processes (its children: torchrun's workers)."""
    children = Path(f"/proc/{host_pid}/task/{host_pid}/children").read_text().split()
    return [int(c) for c in children]


@pytest.mark.e2e
def test_a_run_over_two_pods_meets_through_its_service_and_restarts_as_a_group_after_a_delete_and_a_kill(
        rk, real_cluster, operator_release, real_namespace, tmp_path):
    """resources.nodes: 2 is an Indexed Job of two pods behind a headless Service: the pod of index 1 finds rank 0's
    at <job>-0.<job> (CoreDNS, the pod network) and the two train as one group.
    1. Deleting the index-1 pod mid-training stops both at one agreed checkpoint (its SIGTERM reaches one pod; the
       stop is agreed by every worker), the Job replaces both, and the new group resumes there.
    2. Then a worker of the new index-1 pod is killed outright (SIGKILL, as an OOM kill would): its pod exits 1, the
       Job's pod-failure policy fails the Job, and the operator restarts the group as a whole (a new Job, counted
       in status.groupRestarts), which resumes from the newest checkpoint and succeeds, with rank 0's progress
       only.
    3. Its XP is what one process earns on the same spec (run here, outside the cluster, afterwards): in float32
       without LoRA dropout the two train the same weights to float rounding (tests/trainer/test_distributed.py),
       and resuming restores every random-number state, so neither the world size nor the two interruptions
       change what is graded."""
    volume = _claim(rk, real_namespace, "group-out")
    run = _run("group", "group-out", resources={"gpu": 0, "nodes": 2, "cpu": "500m", "memory": "3Gi"})
    run["spec"]["lora"].update({"maxSteps": 16, "saveSteps": 4, "evalSteps": 4, "bf16": False, "dropout": 0.0})
    rk.apply(run, real_namespace)
    run_dir = volume / real_namespace / "group"
    wait_for("a complete checkpoint on the PVC", lambda: complete_checkpoints(run_dir), timeout=900, interval=1)
    service = rk.get("service", "group-train", real_namespace)
    assert service["spec"]["clusterIP"] == "None", service["spec"]
    pods = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in _pods(rk, real_namespace, "group")}
    assert sorted(pods) == ["0", "1"] and pods["1"]["spec"]["hostname"] == "group-train-1"
    first_job = rk.get("job", "group-train", real_namespace)["metadata"]["uid"]
    rk("delete", "pod", pods["1"]["metadata"]["name"], "-n", real_namespace, "--wait=false")
    pod_0 = pods["0"]["metadata"]["uid"]
    ended = wait_for("pod 0 of the first group ended", lambda: next((
        p for p in _pods(rk, real_namespace, "group") if p["metadata"]["uid"] == pod_0
        and p["status"].get("phase") in ("Succeeded", "Failed")), None), timeout=300, interval=1)
    stopped_at = complete_checkpoints(run_dir)[-1]
    # Pod 0 was not deleted: it stopped itself at the agreed checkpoint (143, which the Job ignores).
    assert ended["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143, ended["status"]
    job = rk.get("job", "group-train", real_namespace)
    assert (job["status"].get("failed") or 0) == 0, job["status"]  # both stopped at the checkpoint: a disruption

    wait_for("the second group training past its resumed step", lambda: (
        rk.status(real_namespace, "group").get("trainer") or {}).get("trainingStep", 0) > stopped_at,
        timeout=900, interval=1)
    second = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
              for p in _pods(rk, real_namespace, "group") if p["status"].get("phase") == "Running"}
    launcher = _host_pid(real_cluster, second["1"])
    killed = _workers(launcher)
    assert killed, "the index-1 pod's launcher has no worker"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    status = wait_for("the run to end", lambda: (s := rk.status(real_namespace, "group")).get("phase")
                      in ("Succeeded", "Failed") and s, timeout=1500, interval=2)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["groupRestarts"] == 1, status
    restarted = next(c for c in status["conditions"] if c["type"] == "GroupRestarting")
    assert (restarted["status"], restarted["reason"]) == ("False", "GroupRestarted"), restarted
    assert "x 2 processes" in next(s for s in status["trainer"]["steps"] if s["name"] == "training-config")["message"]
    training = next(s for s in status["trainer"]["steps"] if s["name"] == "training")
    assert "resumed from checkpoint-" in training["message"], training
    job = rk.get("job", "group-train", real_namespace)
    assert job["metadata"]["uid"] != first_job and (job["status"].get("failed") or 0) == 0, job["status"]
    finished = [p for p in _pods(rk, real_namespace, "group") if p["status"]["phase"] == "Succeeded"]
    assert len(finished) == 2 and not {p["metadata"]["uid"] for p in finished} & {
        p["metadata"]["uid"] for p in second.values()}, "the group was not restarted as a whole"
    reasons = [e["reason"] for e in yaml.safe_load(rk("get", "events", "-n", real_namespace, "--field-selector",
                                                      "involvedObject.name=group", "-o", "yaml"))["items"]]
    assert "GroupRestarting" in reasons, reasons
    assert status["xp"] > 0
    alone = tmp_path / "alone"
    code, err = _finish(_run_trainer(run["spec"], alone, 1), 1200)
    assert code == 0, err[-3000:]
    report = json.loads((alone / "report.json").read_text())
    assert report["xp"] == status["xp"], (report["trainer"]["after"], status["trainer"]["after"])
    print(f"MEASURED XP: 2 pods {status['xp']}, 1 process {report['xp']}")


def test_s3_and_oci_outputs_without_a_volume_survive_a_deleted_pod_and_land_verified(
        rk, real_cluster, operator_release, real_namespace, s3_server, s3_bucket, oci_registry, tmp_path):
    """No PVC at all: the output is an emptyDir; the results go to SeaweedFS and the adapter to a registry, both
    on the host (reached over the pod network at the node's address). The pod is deleted mid-training; the retry
    gets a fresh emptyDir and resumes from the checkpoint the SIGTERM saved and mirrored to the bucket. The bucket
    then holds every file of the manifest, the registry the adapter (pulled back with an OCI client), and the
    adapter fetched from either computes what the merged model computes."""
    rk.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"},
              "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                             "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}}, real_namespace)
    rk.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "registry-push"},
              "type": "kubernetes.io/dockerconfigjson",
              "stringData": {".dockerconfigjson": oci_registry.docker_config(NODE_IP)}}, real_namespace)
    prefix, image = f"{real_namespace}/s3out", f"{oci_registry.host(NODE_IP)}/{real_namespace}/s3out:v1"
    run = _run("s3out", "unused")
    run["spec"]["output"] = {"destinations": [
        {"uri": f"s3://{s3_bucket}/{prefix}", "credentialsSecret": "s3-keys", "endpoint": s3_server.endpoint(NODE_IP)},
        {"uri": f"oci://{image}", "credentialsSecret": "registry-push", "plainHttp": True}]}
    rk.apply(run, real_namespace)

    def mirrored() -> list[str]:
        return [k for k in s3_server.objects(s3_bucket, f"{prefix}/checkpoints/") if k.endswith("/" + MARKER)]

    wait_for("a checkpoint in the bucket", mirrored, timeout=600, interval=1)
    pod = _running_pod(rk, real_namespace, "s3out")["metadata"]["name"]
    rk("delete", "pod", pod, "-n", real_namespace, "--wait=false")
    status = wait_for("the run to end", lambda: (s := rk.status(real_namespace, "s3out")).get("phase")
                      in ("Succeeded", "Failed") and s, timeout=900, interval=2)
    assert status["phase"] == "Succeeded", status.get("message")
    training = next(s for s in status["trainer"]["steps"] if s["name"] == "training")
    assert f"fetched from s3://{s3_bucket}/{prefix})" in training["message"], training  # not from a volume
    artifacts = status["trainer"]["artifacts"]
    assert artifacts["adapterUri"] == f"s3://{s3_bucket}/{prefix}/adapter"
    assert "ArtifactsEphemeral" not in [c["type"] for c in status["conditions"]]
    assert f"s3://{s3_bucket}/{prefix}/adapter" in rk("get", "ltj", "s3out", "-n", real_namespace, "-o", "wide")

    manifest = s3_server.check_against_manifest(s3_bucket, prefix)
    assert artifacts["destinations"][0]["files"] == len(manifest["files"]) + 1
    assert not s3_server.objects(s3_bucket, f"{prefix}/checkpoints/")  # removed after success
    adapter = s3_server.download(s3_bucket, f"{prefix}/adapter/", tmp_path / "adapter")
    merged = s3_server.download(s3_bucket, f"{prefix}/merged/", tmp_path / "merged")
    model = api.ModelSpec.model_validate(run["spec"]["model"])
    assert_adapter_computes_the_merged_model(lambda dtype: load_model(model, dtype, "cpu").model,
                                             adapter, merged)
    oci = artifacts["destinations"][1]
    pulled = oci_registry.pull(f"{oci_registry.host()}/{real_namespace}/s3out@{oci['digest']}", tmp_path / "oci")
    assert {p.name: p.read_bytes() for p in pulled} == {p.name: p.read_bytes() for p in adapter.iterdir()}

def test_a_run_deleted_mid_training_stops_its_pod_in_seconds(rk, real_cluster, operator_release, real_namespace):
    """`kubectl delete ltj`: the garbage collector deletes the Job and the pod; the trainer saves the step in
    progress and exits, so the pod is gone in seconds rather than at the end of its 120 s grace period."""
    volume = _claim(rk, real_namespace, "artifacts")
    run = _run("dropped", "artifacts")
    run["spec"]["lora"].update(maxSteps=10_000, saveSteps=10_000)  # it is mid-training whenever it is deleted
    rk.apply(run, real_namespace)
    wait_for("training under way", lambda: (rk.status(real_namespace, "dropped").get("trainer") or {}).get(
        "trainingStep", 0) > 0, timeout=600, interval=1)
    started = time.monotonic()
    rk("delete", "ltj", "dropped", "-n", real_namespace, "--wait=false")
    wait_for("the run's pod gone", lambda: not _pods(rk, real_namespace, "dropped"), timeout=300, interval=0.2)
    gone = time.monotonic() - started
    saved = complete_checkpoints(volume / real_namespace / "dropped")
    assert saved and 0 < saved[-1] < 10_000, saved  # the checkpoint SIGTERM asked for, not a periodic one
    print(f"MEASURED kubectl delete ltj: pod gone {gone:.1f} s after the delete (checkpoint-{saved[-1]} saved)")


def test_the_operator_pod_stops_promptly_and_its_replacement_takes_over(rk, operator_release, real_cluster):
    """Kopf handles SIGTERM as PID 1; the Deployment's replacement serves again. Runs last: it replaces the
    operator pod the other tests share."""
    started = time.monotonic()
    rk("delete", "pod", operator_release, "-n", RELEASE_NAMESPACE, "--wait=true", "--timeout=120s")
    gone = time.monotonic() - started
    replacement = wait_for("the replacement operator ready", lambda: rk(
        "get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/name=lora-operator", "-o",
        "jsonpath={.items[?(@.status.containerStatuses[0].ready==true)].metadata.name}").strip(), timeout=180)
    assert replacement and replacement != operator_release
    grace = rk.get("deployment", "lora-operator", RELEASE_NAMESPACE)["spec"]["template"]["spec"].get(
        "terminationGracePeriodSeconds", 30)
    print(f"MEASURED operator pod: gone {gone:.1f} s after the delete (grace period {grace} s)")

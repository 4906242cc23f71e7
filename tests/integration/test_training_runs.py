"""Whole runs: kubectl apply -> operator -> Job -> trainer pod on the test node -> status -> terminal phase.

The trainer is the real one (transformers + peft); the tiny runs use a 2-layer Llama built at
test time and stored on a PVC, the end-to-end run the real SmolLM2-135M-Instruct. The one thing
not real: the test node advertises `nvidia.com/gpu` capacity without a GPU (none exists here), so
GPU requests schedule as on a GPU node and the trainer then takes its CPU path.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.conftest import (
    TINY_LORA,
    StatusRecorder,
    assert_succeeded_with_results,
    held_trainer,
    pvc,
    run_until,
    tiny_run,
    training_step,
    wait_for,
)
from tests.http_fakes import completion

pytestmark = pytest.mark.integration



def test_tiny_run_walks_to_succeeded_on_the_gpu_test_node(kubectl, operator, namespace, tiny_model_pvc, test_node):
    kubectl.apply(pvc("artifacts"), namespace)
    recorder = StatusRecorder(kubectl, namespace, "tiny")
    kubectl.apply(tiny_run("tiny", tiny_model_pvc), namespace)
    recorder.start()
    recorder.join(timeout=600)
    status = kubectl.status(namespace, "tiny")
    assert_succeeded_with_results(status, namespace, "tiny")
    pods = yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=tiny-train",
                                  "-o", "yaml"))["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [test_node.name]
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    phases = [s["phase"] for s in recorder.seen]
    assert phases[-1] == "Succeeded" and "Running" in phases
    progresses = [s["progress"] for s in recorder.seen if s["phase"] == "Running" and s["progress"] is not None]
    assert len(set(progresses)) >= 3 and progresses == sorted(progresses), recorder.seen
    assert any(s["loss"] is not None for s in recorder.seen if s["phase"] == "Running")
    table = kubectl("get", "loratrainingjobs", "-n", namespace)
    print(table)
    row = table.splitlines()[1].split()
    assert row[:3] == ["tiny", "Succeeded", "9/9"] and row[4] == "100" and row[6] == str(status["xp"])
    assert "xp" not in json.loads((kubectl.bound_dir(namespace, "artifacts") / namespace / "tiny" / "report.json")
                                  .read_text())["trainer"]  # the trainer never reports XP; the operator awards it
    artifacts = kubectl.bound_dir(namespace, "artifacts") / namespace / "tiny"
    assert (artifacts / "adapter" / "adapter_config.json").exists()
    assert (artifacts / "report.json").exists()
    # where a server mounting the claim finds the adapter, in the status and in `kubectl get -o wide`
    uri = f"pvc://artifacts/{namespace}/tiny/adapter"
    assert status["trainer"]["artifacts"]["adapterUri"] == uri and "ArtifactsEphemeral" not in str(status)
    assert kubectl("get", "ltj", "tiny", "-n", namespace, "-o", "wide").splitlines()[1].split()[-1] == uri


def test_operator_restart_mid_run_then_deletion(kubectl, operator, namespace, tiny_model_pvc, test_node):
    """A restarted operator adopts the running Job (no second one), the trainer's reports resume where they
    were and nothing goes backwards; deleting the run removes Job and pods. The trainer is held from its start
    and let on in slices, so each step of the test finds it mid-run however fast it trains."""
    kubectl.apply(pvc("artifacts"), namespace)
    recorder = StatusRecorder(kubectl, namespace, "restart")
    kubectl.apply(tiny_run("restart", tiny_model_pvc, lora={**TINY_LORA, "maxSteps": 1000}),
                  namespace)
    recorder.start()
    with held_trainer(kubectl, namespace, "restart") as pgid:
        # Long slices while it starts up: a thousand steps leave room for 25 a slice.
        run_until(pgid, lambda: training_step(kubectl, namespace, "restart") > 0, slice_s=0.5)
        operator.stop()
        pod = kubectl("get", "pods", "-n", namespace, "-o", "name", "-l", "batch.kubernetes.io/job-name=restart-train")
        stderr = test_node.pod_dir(namespace, pod.strip().removeprefix("pod/")) / "stderr.log"
        # The trainer trains on until a report is refused (it logs the first failure, then backs off).
        run_until(pgid, lambda: "progress report to" in stderr.read_text(), slice_s=0.05)
        at_stop = training_step(kubectl, namespace, "restart")
        operator.start()  # the trainer's backoff runs out meanwhile: its next report goes out at once
        run_until(pgid, lambda: training_step(kubectl, namespace, "restart") > at_stop, slice_s=0.05)
        live = kubectl.status(namespace, "restart")
        assert live["phase"] == "Running" and live["trainer"]["trainingStep"] > at_stop, live
        # Still held, so the recorder sees the live report too, not only the final summary.
        wait_for("the recorder to see the live report", lambda: [
            s for s in recorder.seen if s["phase"] == "Running" and (s["trainingStep"] or 0) > at_stop], timeout=30)
    recorder.join(timeout=600)
    status = kubectl.status(namespace, "restart")
    assert_succeeded_with_results(status, namespace, "restart")
    progresses = [s["progress"] for s in recorder.seen if s["progress"] is not None]
    assert progresses == sorted(progresses), recorder.seen  # nothing regressed
    assert [s for s in recorder.seen if s["phase"] == "Running" and (s["trainingStep"] or 0) > at_stop], \
        recorder.seen  # live reports came back, not only the final summary
    jobs = yaml.safe_load(kubectl("get", "jobs", "-n", namespace, "-o", "yaml"))["items"]
    pods = yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-o", "yaml"))["items"]
    assert len(jobs) == 1 and len(pods) == 1
    kubectl("delete", "ltj", "restart", "-n", namespace, "--timeout=60s")
    wait_for("Job and pod garbage-collected", lambda: not yaml.safe_load(
        kubectl("get", "jobs,pods", "-n", namespace, "-o", "yaml"))["items"], timeout=90)


@pytest.mark.parametrize(("overrides", "says"), [
    # Every item is shorter than minTextLength: the dataset ends up empty, which no retry can fix.
    ({"data": {"minTextLength": 5000}}, "no usable training items"),
    # A ConfigMap that does not exist: the pod starts anyway (optional volume) and the trainer names it,
    # instead of the pod waiting in ContainerCreating, holding its GPU, until the deadline.
    ({"datasets": [{"configMap": {"name": "handbook-data", "key": "data.jsonl"}}]},
     "is key 'data.jsonl' in ConfigMap 'handbook-data'"),
], ids=["empty-after-refining", "missing-configmap"])
def test_invalid_dataset_fails_fast_with_the_trainer_message(kubectl, operator, namespace, tiny_model_pvc,
                                                             overrides, says):
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run("broken", tiny_model_pvc, runtime={"backoffLimit": 3}, **overrides), namespace)

    def failed():
        s = kubectl.status(namespace, "broken")
        return s if s.get("phase") == "Failed" else [False, s.get("phase"), s.get("message"), s.get("stepSummary")]

    status = wait_for("Failed", failed, timeout=180)
    assert "exit code 2" in status["message"], status["message"]
    assert says in status["message"], status["message"]
    failed = next(s for s in status["trainer"]["steps"] if s["state"] == "Failed")
    assert failed["name"] == "datasets"
    jobs = yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-o", "yaml"))["items"]
    assert len(jobs) == 1  # invalid input is not retried (podFailurePolicy)
    assert "Warning" in kubectl.events(namespace, "broken", "Failed")


def test_final_metrics_arrive_through_the_termination_message_when_the_operator_is_down(
    kubectl, operator, namespace, tiny_model_pvc, test_node
):
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run("cut", tiny_model_pvc), namespace)
    # Held from its start, else the trainer may finish before the operator stops (or even before it is frozen).
    with held_trainer(kubectl, namespace, "cut") as pgid:
        run_until(pgid, lambda: any(s.get("state") != "Pending" for s in (
            kubectl.status(namespace, "cut").get("trainer") or {}).get("steps", [])), slice_s=0.2)  # a first report
        operator.stop()
    assert kubectl.status(namespace, "cut").get("phase") != "Succeeded"
    wait_for("the trainer to finish without the operator", lambda: [
        p for p in yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-o", "yaml"))["items"]
        if p["status"].get("phase") == "Succeeded"], timeout=600)
    operator.start()
    status = wait_for("a terminal phase", lambda: (s := kubectl.status(namespace, "cut")).get("phase")
                      in ("Succeeded", "Failed") and s, timeout=120)
    assert_succeeded_with_results(status, namespace, "cut")
    pod = yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-o", "yaml"))["items"][0]
    stderr = (test_node.pod_dir(namespace, pod["metadata"]["name"]) / "stderr.log").read_text()
    assert "termination message" in stderr  # the reports really were refused


def test_secrets_reach_the_trainer_and_nothing_else(kubectl, operator, namespace, tiny_model_pvc, test_node,
                                                     judge_server):
    """The judge's API key and the hub token go to the trainer as environment variables from a Secret and
    appear nowhere a user or another tenant can read: not in the resource, its Events, the operator's log,
    the pod's logs and termination message, nor any file the run wrote. The fake judge proves the key was
    used (the process node runs pods on this host, so the judge is on 127.0.0.1)."""
    key, token = f"sk-judge-{uuid.uuid4().hex}", f"hf_{uuid.uuid4().hex}"
    judge_server.reply = completion(json.dumps(
        {"taskAccuracy": 50, "completeness": 50, "correctness": 50, "coherence": 50}))
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                   "stringData": {"judge": key, "hub": token}}, namespace)
    kubectl.apply(tiny_run("secret", tiny_model_pvc, lora={**TINY_LORA, "maxSteps": 10},
                            hubTokenSecret={"name": "creds", "key": "hub"},
                            evaluation={"heldOutItems": 2, "generation": {"maxNewTokens": 8}, "grader": {
                                "type": "llmJudge", "endpoint": judge_server.url, "model": "judge",
                                "apiKeySecret": {"name": "creds", "key": "judge"}}}),
                  namespace)
    status = wait_for("a terminal phase", lambda: (s := kubectl.status(namespace, "secret")).get("phase")
                      in ("Succeeded", "Failed") and s, timeout=600)
    assert status["phase"] == "Succeeded", status.get("message")
    assert f"Bearer {key}" in [r["auth"] for r in judge_server.seen]  # the key was used, so it really was in the pod
    pod = yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-o", "yaml"))["items"][0]
    pod_dir = test_node.pod_dir(namespace, pod["metadata"]["name"])
    readable = {
        "the resource": kubectl("get", "ltj", "secret", "-n", namespace, "-o", "json"),
        "the Events": kubectl("get", "events", "-n", namespace, "-o", "json"),
        "the pod": kubectl("get", "pod", pod["metadata"]["name"], "-n", namespace, "-o", "json"),
        "the operator's log": "".join(p.read_text() for p in operator.log_dir.glob("operator-*.log")),
        **{f"the pod's {f}": (pod_dir / f).read_text() for f in ("stdout.log", "stderr.log", "termination-log")},
        **{f"artifact {p.name}": p.read_text(errors="replace")
           for p in (kubectl.bound_dir(namespace, "artifacts") / namespace / "secret").rglob("*")
           if p.is_file() and p.suffix in (".json", ".jsonl", ".txt", ".md", "")},
    }
    assert len(readable) > 8
    leaked = [where for where, text in readable.items() if key in text or token in text]
    assert not leaked, leaked


def test_an_s3_destination_gets_its_keys_from_a_secret_and_its_uri_reaches_the_status(
        kubectl, operator, namespace, tiny_model_pvc, s3_server, s3_bucket):
    """The operator mounts the destination's Secret for the trainer only; a Secret with the wrong key fails the
    run at step 3 without retries, naming the destination; the right one lands the copy in the bucket."""
    def run(name: str, secret: str) -> dict:
        return tiny_run(name, tiny_model_pvc, lora={**TINY_LORA, "maxSteps": 20}, output={"destinations": [
            {"uri": f"s3://{s3_bucket}/{name}", "endpoint": s3_server.endpoint(), "credentialsSecret": secret}]})

    for name, secret in (("s3-good", s3_server.secret_key), ("s3-bad", "wrong")):
        kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                       "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": secret}},
                      namespace)
        kubectl.apply(run(name, name), namespace)
    bad = wait_for("s3-bad Failed", lambda: (s := kubectl.status(namespace, "s3-bad")).get("phase") == "Failed"
                   and s, timeout=300)
    assert "exit code 2" in bad["message"] and f"output.destinations[0] s3://{s3_bucket}/s3-bad" in bad["message"]
    assert next(s for s in bad["trainer"]["steps"] if s["state"] == "Failed")["name"] == "training-config"
    good = wait_for("s3-good Succeeded", lambda: (s := kubectl.status(namespace, "s3-good")).get("phase")
                    in ("Succeeded", "Failed") and s, timeout=600)
    assert good["phase"] == "Succeeded", good.get("message")
    copy = good["trainer"]["artifacts"]["destinations"][0]
    assert good["trainer"]["artifacts"]["adapterUri"] == copy["adapterUri"] == f"s3://{s3_bucket}/s3-good/adapter"
    s3_server.check_against_manifest(s3_bucket, "s3-good")
    assert not s3_server.objects(s3_bucket, "s3-bad/")

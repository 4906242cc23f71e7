"""spec -> Kubernetes objects, without a cluster."""

import pytest
import yaml

from lora_contract import api, wire
from lora_operator import builders

CFG = builders.OperatorConfig(trainer_image="example/trainer:1", tolerations=[{"key": "team", "operator": "Exists"}])


def _spec(**overrides) -> api.LoraTrainingJobSpec:
    data = {"model": {"hubId": "org/model"}, "datasets": [{"inline": [{"instruction": "a", "output": "b"}]}]}
    data.update(overrides)
    return api.LoraTrainingJobSpec.model_validate(data)


def _pod(job):
    return job["spec"]["template"]["spec"]


def test_job_requests_gpus_and_runs_the_trainer() -> None:
    job = builders.job("demo", "ns1", _spec(resources={"gpu": 2, "gpuType": "NVIDIA-A100"}), CFG)
    assert job["metadata"]["name"] == "demo-train"
    pod = _pod(job)
    container = pod["containers"][0]
    assert container["image"] == "example/trainer:1"
    assert container["command"] == ["lora-trainer", "run", "/etc/lora/spec/spec.yaml", "--output", "/output/ns1/demo"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "team", "operator": "Exists"} in pod["tolerations"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "demo-trainer"
    assert pod["automountServiceAccountToken"] is False


def test_cpu_job_has_no_gpu_request_or_toleration() -> None:
    pod = _pod(builders.job("demo", "ns", _spec(resources={"gpu": 0}), builders.OperatorConfig()))
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod


def test_runtime_class_from_the_spec_or_the_charts_gpu_default() -> None:
    cfg = builders.OperatorConfig.from_env({"LORA_TRAINER_GPU_RUNTIME_CLASS": "nvidia"})
    assert _pod(builders.job("d", "ns", _spec(resources={"gpu": 1}), cfg))["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in _pod(builders.job("d", "ns", _spec(resources={"gpu": 0}), cfg))
    own = _spec(resources={"gpu": 1, "runtimeClassName": "nvidia-cdi"})
    assert _pod(builders.job("d", "ns", own, cfg))["runtimeClassName"] == "nvidia-cdi"
    assert "runtimeClassName" not in _pod(builders.job("d", "ns", _spec(resources={"gpu": 1}), CFG))


def test_cpu_is_requested_not_limited_and_memory_is_both() -> None:
    resources = _pod(builders.job("demo", "ns", _spec(resources={"gpu": 0, "cpu": "3", "memory": "5Gi"}),
                                  builders.OperatorConfig()))["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "3", "memory": "5Gi"}, "limits": {"memory": "5Gi"}}


def test_security_context_is_non_root_and_read_only() -> None:
    pod = _pod(builders.job("demo", "ns", _spec(), CFG))
    assert pod["securityContext"]["runAsNonRoot"] is True
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/output", "/etc/lora/spec", "/var/run/lora/token"} <= mounts


def test_invalid_input_exit_code_fails_the_job_without_retries() -> None:
    rules = builders.job("demo", "ns", _spec(), CFG)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [wire.EXIT_INVALID_INPUT] == [2]


def test_a_trainer_stopped_by_sigterm_is_a_disruption_not_a_failure() -> None:
    """Exit 143 (the trainer saved a checkpoint at SIGTERM) is ignored like an eviction: the retry resumes
    without using up backoffLimit. Other exits still count."""
    rules = builders.job("demo", "ns", _spec(), CFG)["spec"]["podFailurePolicy"]["rules"]
    ignored = [r["onExitCodes"]["values"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
    assert ignored == [[wire.EXIT_INTERRUPTED]] == [[143]]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    codes = {c for r in rules if "onExitCodes" in r for c in r["onExitCodes"]["values"]}
    assert not codes & {wire.EXIT_FAILED, 137}  # a failure and an OOM kill count against backoffLimit


def test_termination_grace_period_defaults_to_a_step_and_a_save_and_follows_the_spec() -> None:
    assert _pod(builders.job("demo", "ns", _spec(), CFG))["terminationGracePeriodSeconds"] == 120
    spec = _spec(runtime={"terminationGracePeriodSeconds": 600})
    assert _pod(builders.job("demo", "ns", spec, CFG))["terminationGracePeriodSeconds"] == 600


def test_runtime_limits_suspend_and_kueue() -> None:
    spec = _spec(runtime={"activeDeadlineSeconds": 600, "backoffLimit": 1, "ttlSecondsAfterFinished": 60},
                 queueName="gpu-queue")
    job = builders.job("demo", "ns", spec, CFG)
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    assert job["spec"]["suspend"] is True  # Kueue unsuspends on admission
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert builders.job("d", "ns", _spec(suspend=True), CFG)["spec"]["suspend"] is True
    assert builders.job("d", "ns", _spec(), CFG)["spec"]["suspend"] is False


def test_output_pvc_and_dataset_configmaps_are_mounted() -> None:
    spec = _spec(
        output={"claimName": "artifacts", "subPath": "runs/x"},
        datasets=[{"configMap": {"name": "qa", "key": "data.jsonl"}}, {"configMap": {"name": "qa", "key": "b.csv"}}],
        volumes=[{"name": "models", "claimName": "model-store", "mountPath": "/models"}],
    )
    pod = _pod(builders.job("demo", "ns", spec, CFG))
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["output"]["persistentVolumeClaim"] == {"claimName": "artifacts"}
    assert pod["containers"][0]["command"][-1] == "/output/runs/x"
    cm_vols = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "qa"]
    assert len(cm_vols) == 1 and cm_vols[0]["configMap"]["optional"] is True  # missing: the trainer says so
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/etc/lora/datasets/qa"]["readOnly"] is True
    assert mounts["/models"]["readOnly"] is True
    assert vols["user-models"]["persistentVolumeClaim"]["claimName"] == "model-store"


def test_the_trainer_reports_to_the_operator_with_an_audience_bound_token_and_no_rbac(tmp_path) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nCA\n")
    cfg = builders.OperatorConfig.from_env({"LORA_PROGRESS_URL": "https://op-progress.lora-system.svc:8443/",
                                            "LORA_PROGRESS_TLS_DIR": str(tmp_path)})
    children = builders.children("demo", "ns1", _spec(), cfg)
    assert [o["kind"] for o in children] == ["ServiceAccount", "ConfigMap", "Job"]  # no Role, no RoleBinding
    assert children[1]["data"][builders.PROGRESS_CA_KEY] == "-----BEGIN CERTIFICATE-----\nCA\n"
    pod = _pod(children[2])
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LORA_REPORT_URL"] == "https://op-progress.lora-system.svc:8443/v1/namespaces/ns1/loratrainingjobs/demo/report"
    assert env["LORA_REPORT_CA"] == "/etc/lora/spec/progress-ca.crt"
    assert env["LORA_REPORT_TOKEN"] == "/var/run/lora/token/token"
    token = next(v for v in pod["volumes"] if v["name"] == "report-token")["projected"]["sources"]
    assert token == [{"serviceAccountToken": {"path": "token", "audience": "lora-operator", "expirationSeconds": 600}}]
    assert pod["automountServiceAccountToken"] is False and children[0]["automountServiceAccountToken"] is False


def test_runs_of_the_trainer_image_and_of_listed_images_are_trusted() -> None:
    default = builders.OperatorConfig.from_env({"LORA_TRAINER_IMAGE": "reg/trainer:1"})
    assert default.untrusted_image(None) is None and default.untrusted_image("reg/trainer:1") is None
    assert default.untrusted_image("me/custom:1") == "me/custom:1"
    listed = builders.OperatorConfig.from_env({"LORA_TRAINER_IMAGE": "reg/trainer:1",
                                               "LORA_TRUSTED_TRAINER_IMAGES": '["reg/trainer:1", "me/custom:1"]'})
    assert listed.untrusted_image("me/custom:1") is None


def test_spec_configmap_round_trips_to_the_same_spec() -> None:
    spec = _spec(lora={"rank": 16, "targetModules": ["all-linear"]})
    data = builders.spec_configmap("demo", spec, CFG)["data"]["spec.yaml"]
    assert api.LoraTrainingJobSpec.model_validate(yaml.safe_load(data)) == spec


def test_children_are_created_job_last_and_judge_key_comes_from_a_secret() -> None:
    spec = _spec(evaluation={"grader": {"type": "llmJudge", "endpoint": "https://judge", "model": "m",
                                        "apiKeySecret": {"name": "judge", "key": "token"}}})
    kinds = [o["kind"] for o in builders.children("demo", "ns", spec, CFG)]
    assert kinds == ["ServiceAccount", "ConfigMap", "Job"]
    env = {e["name"]: e for e in _pod(builders.job("demo", "ns", spec, CFG))["containers"][0]["env"]}
    assert env["LORA_JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "judge", "key": "token"}
    assert "HF_TOKEN" not in env


def test_hub_token_pull_secrets_and_workload_identity() -> None:
    spec = _spec(hubTokenSecret={"name": "hf", "key": "token"})
    cfg = builders.OperatorConfig.from_env({
        "LORA_TRAINER_IMAGE_PULL_SECRETS": '["regcred"]',
        "LORA_TRAINER_SERVICE_ACCOUNT_ANNOTATIONS": '{"iam.gke.io/gcp-service-account": "t@p.iam.gserviceaccount.com"}',
    })
    pod = _pod(builders.job("demo", "ns", spec, cfg))
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    account = builders.service_account("demo", cfg)
    assert account["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "t@p.iam.gserviceaccount.com"}
    assert "imagePullSecrets" not in _pod(builders.job("demo", "ns", _spec(), CFG))
    assert "annotations" not in builders.service_account("demo", CFG)["metadata"]


def test_operator_config_from_env() -> None:
    cfg = builders.OperatorConfig.from_env({"LORA_TRAINER_IMAGE": "x/y:2", "LORA_TRAINER_NODE_SELECTOR": '{"a": "b"}'})
    assert cfg.trainer_image == "x/y:2" and cfg.node_selector == {"a": "b"}
    assert _pod(builders.job("d", "ns", _spec(), cfg))["nodeSelector"] == {"a": "b"}


def test_destination_secrets_are_mounted_optional_with_only_their_keys_and_a_volume_gets_its_uri() -> None:
    spec = _spec(output={"claimName": "artifacts", "destinations": [
        {"uri": "s3://adapters/team-a", "endpoint": "http://minio.storage:9000", "credentialsSecret": "s3-keys"},
        {"uri": "s3://backup/team-a"},  # no Secret: boto3's chain (workload identity)
        {"uri": "oci://ghcr.io/team-a/adapter:v1", "credentialsSecret": "ghcr-push"},
        {"uri": "hf://team-a/adapter", "credentialsSecret": "hub-push"}]})
    pod = _pod(builders.job("demo", "ns", spec, CFG))
    [volume] = [v for v in pod["volumes"] if v["name"] == "destinations"]
    source, registry, hub = volume["projected"]["sources"]  # destination 1 has no Secret
    assert source["secret"]["name"] == "s3-keys" and source["secret"]["optional"] is True
    assert [i["path"] for i in source["secret"]["items"]] == ["0/AWS_ACCESS_KEY_ID", "0/AWS_SECRET_ACCESS_KEY",
                                                              "0/AWS_SESSION_TOKEN"]
    assert registry["secret"] == {"name": "ghcr-push", "optional": True,  # a kubernetes.io/dockerconfigjson one
                                  "items": [{"key": ".dockerconfigjson", "path": "2/.dockerconfigjson"}]}
    assert hub["secret"]["items"] == [{"key": "HF_TOKEN", "path": "3/HF_TOKEN"}]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["destinations"] == {"name": "destinations", "mountPath": wire.DESTINATION_SECRETS_DIR,
                                      "readOnly": True}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env[wire.DESTINATION_SECRETS_ENV] == wire.DESTINATION_SECRETS_DIR
    assert env[wire.OUTPUT_URI_ENV] == "pvc://artifacts/ns/demo"  # the default subPath <namespace>/<name>
    assert not any("secretKeyRef" in str(e) and "s3-keys" in str(e) for e in pod["containers"][0]["env"])


def test_an_emptydir_output_has_no_volume_uri() -> None:
    env = {e["name"] for e in _pod(builders.job("demo", "ns", _spec(), CFG))["containers"][0]["env"]}
    assert wire.OUTPUT_URI_ENV not in env and wire.DESTINATION_SECRETS_ENV not in env


def test_several_gpus_get_a_shared_memory_volume_for_nccl() -> None:
    def shm(gpu: int) -> list[dict]:
        pod = _pod(builders.job("demo", "ns", _spec(resources={"gpu": gpu}), CFG))
        return [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"]

    assert shm(1) == [] and shm(0) == []
    assert shm(2) == [{"name": "shm", "mountPath": "/dev/shm"}]
    pod = _pod(builders.job("demo", "ns", _spec(resources={"gpu": 4}), CFG))
    assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_a_run_over_several_pods_is_an_indexed_job_behind_a_headless_service() -> None:
    spec = _spec(resources={"gpu": 2, "nodes": 3}, output={"claimName": "shared"})
    kinds = [c["kind"] for c in builders.children("demo", "ns", spec, CFG)]
    assert kinds == ["ServiceAccount", "ConfigMap", "Service", "Job"]  # the Service before the Job's pods
    job = builders.job("demo", "ns", spec, CFG)
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == (
        "Indexed", 3, 3)
    pod = _pod(job)
    assert pod["subdomain"] == "demo-train"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
    assert env[wire.NNODES_ENV] == "3" and env[wire.NPROC_PER_NODE_ENV] == "2"
    assert env[wire.NODE_RANK_ENV] == {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert env[wire.MASTER_ADDR_ENV] == "demo-train-0.demo-train.ns.svc"  # <hostname>.<subdomain>.<ns>.svc
    assert env[wire.MASTER_PORT_ENV] == str(wire.RENDEZVOUS_PORT)
    service = builders.workers_service("demo")
    assert service["metadata"]["name"] == pod["subdomain"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "demo-train"}
    # A worker that died (any other exit) fails the whole Job, for the operator to restart the group; the
    # rules before it still come first (invalid input fails, a stop at SIGTERM and a disruption are ignored).
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[:-1] == builders.job("demo", "ns", _spec(), CFG)["spec"]["podFailurePolicy"]["rules"]
    assert rules[-1] == {"action": "FailJob",
                         "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]}}


def test_a_one_pod_run_has_no_service_and_no_group_settings() -> None:
    spec = _spec()
    assert [c["kind"] for c in builders.children("demo", "ns", spec, CFG)] == ["ServiceAccount", "ConfigMap", "Job"]
    job = builders.job("demo", "ns", spec, CFG)
    assert "completionMode" not in job["spec"] and "subdomain" not in _pod(job)
    assert not any(e["name"].startswith("PET_") for e in _pod(job)["containers"][0]["env"])


def test_several_pods_need_a_shared_output_volume() -> None:
    with pytest.raises(ValueError, match=r"resources\.nodes > 1 needs output\.claimName"):
        _spec(resources={"nodes": 2})


def test_only_pod_0_of_a_run_over_several_pods_may_report() -> None:
    labels = {builders.JOB_LABEL: "demo"}
    assert builders.reporting_run(labels, None) == "demo"  # a one-pod run
    assert builders.reporting_run(labels, {builders.COMPLETION_INDEX: "0"}) == "demo"
    assert builders.reporting_run(labels, {builders.COMPLETION_INDEX: "1"}) is None  # trains only
    assert builders.reporting_run({}, None) is None

"""Results copied to an S3-compatible store (output.destinations), against a real SeaweedFS server on this host
(tests/cluster/s3server.py): every object verified against the manifest, the adapter loaded back from the
bucket, checkpoints there to resume from, and the failures a user meets (wrong keys, a missing Secret, an
endpoint that is down) with their exit codes."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lora_contract.progress import StepEvent, TrainEvent, parse_event
from lora_contract.wire import DESTINATION_SECRETS_ENV, EXIT_FAILED, EXIT_INVALID_INPUT
from lora_trainer.checkpoints import MARKER
from lora_trainer.cli import main
from lora_trainer.steps.saving import rank_warning
from lora_trainer.steps.validation import TOLERANCE
from tests.cluster.controlplane import free_port
from tests.cluster.registry import Registry
from tests.cluster.s3server import S3Server
from tests.trainer.conftest import tiny_spec, tiny_spec_dict
from tests.trainer.test_pipeline import run

SECRET = "s3-credentials"


def _destination(server: S3Server, bucket: str, endpoint: str | None = None) -> dict:
    return {"uri": f"s3://{bucket}/team-a/run", "endpoint": endpoint or server.endpoint(), "credentialsSecret": SECRET}


@pytest.fixture
def secrets_dir(tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the operator mounts the destination Secrets into, with destination 0's keys."""
    root = tmp_path / "secrets"
    (root / "0").mkdir(parents=True)
    (root / "0" / "AWS_ACCESS_KEY_ID").write_text(s3_server.access_key)
    (root / "0" / "AWS_SECRET_ACCESS_KEY").write_text(s3_server.secret_key + "\n")  # as kubectl create often leaves it
    monkeypatch.setenv(DESTINATION_SECRETS_ENV, str(root))
    return root


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_results_are_uploaded_verified_and_the_adapter_loads_from_the_bucket(
        tiny_model: Path, tmp_path: Path, s3_server: S3Server, s3_bucket: str, secrets_dir: Path) -> None:
    finished = run(tiny_spec(tiny_model, output={"destinations": [_destination(s3_server, s3_bucket)]}),
                   tmp_path / "out")
    assert finished.result.exit_code == 0, finished.status.message
    out, artifacts = finished.output, finished.status.artifacts
    manifest = json.loads((out / "manifest.json").read_text())
    [copy] = artifacts.destinations
    assert copy.uri == f"s3://{s3_bucket}/team-a/run" and artifacts.adapter_uri == copy.uri + "/adapter"
    assert copy.digest == "sha256:" + _sha256((out / "manifest.json").read_bytes())
    assert copy.files == len(manifest["files"]) + 1

    assert s3_server.check_against_manifest(s3_bucket, "team-a/run") == manifest  # every file, byte for byte
    listed = {f"team-a/run/{e['path']}" for e in manifest["files"]}
    extra = set(s3_server.objects(s3_bucket, "team-a/run/")) - listed
    assert extra == {"team-a/run/manifest.json", *(f"team-a/run/evaluation/{w}.json"
                                                   for w in ("before", "after", "testing"))}

    # success removed the checkpoints, on the volume and in the bucket, and said how much that freed
    assert not (out / "checkpoints").exists() and not s3_server.objects(s3_bucket, "team-a/run/checkpoints/")
    assert artifacts.checkpoints_removed_bytes > 0
    assert "checkpoints removed" in finished.recorder.message(9)
    assert f"uploaded to s3://{s3_bucket}/team-a/run and read back" in finished.recorder.message(5)

    # the adapter as a server would get it: downloaded from the bucket, loaded with peft on the base model
    adapter = s3_server.download(s3_bucket, "team-a/run/adapter/", tmp_path / "downloaded")
    def base(dtype: torch.dtype) -> Any:
        return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)

    assert_adapter_computes_the_merged_model(base, adapter, out / "merged")


def assert_adapter_computes_the_merged_model(base: Callable[[torch.dtype], Any], adapter: Path, merged: Path) -> None:
    """``adapter`` on the base model (``base(dtype)``) gives the merged model's next tokens and logits within
    step 6's tolerance for the precision the merged weights were saved in (merging rounded them to it once
    more). Both run in float32: in bf16 a 30-layer model's activations drift apart by rounding alone (SmolLM2:
    1.6 of max |logit| 28 in bf16, 0.21 in float32, on the same files)."""
    full = AutoModelForCausalLM.from_pretrained(merged).eval()
    tolerance = TOLERANCE[full.dtype]
    adapted = PeftModel.from_pretrained(base(torch.float32), str(adapter)).eval()
    prompts = torch.tensor([[1, 5, 9, 14, 2, 7], [3, 3, 8, 21, 40, 6]])
    with torch.inference_mode():
        expected, got = full.float()(input_ids=prompts).logits, adapted(input_ids=prompts).logits
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert (got - expected).abs().max().item() <= tolerance * max(1.0, expected.abs().max().item())

def test_a_second_attempt_sends_only_what_is_missing(
        tiny_model: Path, tmp_path: Path, s3_server: S3Server, s3_bucket: str, secrets_dir: Path) -> None:
    """A retried pod (after a failure in steps 6-9) republishes: objects equal to the local files stay."""
    from lora_contract.api import OutputDestination
    from lora_trainer.destinations import S3Store

    store = S3Store(0, OutputDestination.model_validate(_destination(s3_server, s3_bucket)))
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x01" * 70_000)
    assert store.upload(folder / "weights.bin", "adapter/weights.bin") is True
    assert store.upload(folder / "weights.bin", "adapter/weights.bin") is False  # same size and hash
    (folder / "weights.bin").write_bytes(b"\x02" * 70_000)  # same size, other bytes: sent again
    assert store.upload(folder / "weights.bin", "adapter/weights.bin") is True
    assert store.read_back("adapter/weights.bin") == (70_000, _sha256(b"\x02" * 70_000))


def test_refused_credentials_fail_before_training_with_exit_2(
        tiny_model: Path, tmp_path: Path, s3_server: S3Server, s3_bucket: str, secrets_dir: Path) -> None:
    (secrets_dir / "0" / "AWS_SECRET_ACCESS_KEY").write_text("not-the-secret")
    finished = run(tiny_spec(tiny_model, output={"destinations": [_destination(s3_server, s3_bucket)]}),
                   tmp_path / "out")
    assert finished.result.exit_code == EXIT_INVALID_INPUT
    message = finished.recorder.message(3)
    assert f"output.destinations[0] s3://{s3_bucket}/team-a/run at {s3_server.endpoint()}: a test write refused" \
        in message and "check the Secret s3-credentials" in message
    assert not (tmp_path / "out" / "checkpoints").exists()  # failed before training
    assert finished.status.artifacts is None and not s3_server.objects(s3_bucket)


def test_a_missing_secret_is_named(tiny_model: Path, tmp_path: Path, s3_server: S3Server, s3_bucket: str,
                                   secrets_dir: Path) -> None:
    for key in (secrets_dir / "0").iterdir():  # mounted optional: a Secret that does not exist is an empty folder
        key.unlink()
    finished = run(tiny_spec(tiny_model, output={"destinations": [_destination(s3_server, s3_bucket)]}),
                   tmp_path / "out")
    assert finished.result.exit_code == EXIT_INVALID_INPUT
    assert ("Secret s3-credentials does not exist or lacks AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            in finished.recorder.message(3))


def test_an_endpoint_that_is_down_fails_with_exit_1_and_reports_no_artifact(
        tiny_model: Path, tmp_path: Path, s3_server: S3Server, s3_bucket: str, secrets_dir: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    finished = run(tiny_spec(tiny_model, output={"destinations": [_destination(s3_server, s3_bucket, down)]}),
                   tmp_path / "out")
    assert finished.result.exit_code == EXIT_FAILED  # retryable: the store may be back for the next pod
    assert f"at {down}: a test write: cannot connect to the endpoint after retries" in finished.recorder.message(3)
    assert finished.status.artifacts is None


def _bucket_checkpoints(server: S3Server, bucket: str) -> list[int]:
    return sorted(int(k.split("/")[3].split("-")[1]) for k in server.objects(bucket, "team-a/run/checkpoints/")
                  if k.endswith("/" + MARKER))


def test_a_run_killed_mid_training_resumes_from_the_bucket_on_an_empty_volume(
        tiny_model: Path, tmp_path: Path, s3_server: S3Server, s3_bucket: str, secrets_dir: Path) -> None:
    """Like a retried pod on another node with an emptyDir output: nothing local, the checkpoint in the bucket."""
    total = 400
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(
        tiny_model, lora={"maxSteps": total, "saveSteps": 25, "evalSteps": 1000, "loggingSteps": 5},
        evaluation={"heldOutItems": 1, "queries": []},
        output={"destinations": [_destination(s3_server, s3_bucket)], "merge": False})))
    first, events = tmp_path / "first", tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "lora_trainer.cli", "run", str(spec), "--output", str(first),
                             "--events", str(events), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not _bucket_checkpoints(s3_server, s3_bucket) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # a node lost: no SIGTERM checkpoint, no cleanup
    finally:
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    saved = _bucket_checkpoints(s3_server, s3_bucket)
    assert saved and saved[-1] < total, f"killed too late: {saved}"
    before = len(events.read_text().splitlines())

    assert main(["run", str(spec), "--output", str(tmp_path / "second"), "--events", str(events), "--quiet"]) == 0
    second = [parse_event(line) for line in events.read_text().splitlines()][before:]
    newest = saved[-1]
    train = [e for e in second if isinstance(e, TrainEvent)]
    assert train[0].step == newest + 5 and train[-1].step == total  # continued from the bucket, not restarted
    message = next(e.message for e in second if isinstance(e, StepEvent) and e.index == 4 and e.state == "Completed")
    assert f"resumed from checkpoint-{newest} (checkpoint-{newest} fetched from s3://{s3_bucket}/team-a/run)" in message
    assert not s3_server.objects(s3_bucket, "team-a/run/checkpoints/")  # removed after success



def test_a_rank_above_the_serving_default_names_the_flag_value_to_use() -> None:
    assert rank_warning(8) is None and rank_warning(16) is None
    assert "--max-lora-rank=32 (KServe: lora.maxRank: 32" in rank_warning(24)  # the flag takes no 24
    assert "--max-lora-rank=320" in rank_warning(300) and "--max-lora-rank=512" in rank_warning(512)


def _registry_secret(secrets_dir: Path, registry: Registry, password: str | None = None) -> None:
    """Destination 0's Secret as a kubernetes.io/dockerconfigjson one, instead of S3 keys."""
    for key in (secrets_dir / "0").iterdir():
        key.unlink()
    (secrets_dir / "0" / ".dockerconfigjson").write_text(registry.docker_config(password=password))


def test_the_adapter_is_pushed_to_a_registry_as_a_modelpack_artifact_and_pulls_back_verified(
        tiny_model: Path, tmp_path: Path, oci_registry: Registry, secrets_dir: Path) -> None:
    _registry_secret(secrets_dir, oci_registry)
    uri = f"oci://{oci_registry.host()}/adapters/tiny:v1"
    finished = run(tiny_spec(tiny_model, output={"destinations": [
        {"uri": uri, "plainHttp": True, "credentialsSecret": SECRET}]}), tmp_path / "out")
    assert finished.result.exit_code == 0, finished.status.message
    out, [copy] = finished.output, finished.status.artifacts.destinations
    raw, manifest = oci_registry.manifest("adapters/tiny", "v1")
    assert copy.digest == "sha256:" + _sha256(raw) and copy.uri == uri
    assert copy.adapter_uri == f"oci://{oci_registry.host()}/adapters/tiny@{copy.digest}"  # pinned: tags move
    assert finished.status.artifacts.adapter_uri == copy.adapter_uri
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    run_manifest = _sha256((out / "manifest.json").read_bytes())
    assert manifest["annotations"]["io.airepublic.lora.manifest-sha256"] == run_manifest
    local = {p.name: p for p in (out / "adapter").iterdir()}
    types = {layer["annotations"]["org.cncf.model.filepath"]: layer["mediaType"] for layer in manifest["layers"]}
    assert set(types) == set(local) and types["adapter_model.safetensors"].endswith("weight.v1.raw")
    assert types["adapter_config.json"].endswith("weight.config.v1.raw")

    pulled = oci_registry.pull(f"{oci_registry.host()}/adapters/tiny@{copy.digest}", tmp_path / "pulled")
    assert {p.name: p.read_bytes() for p in pulled} == {n: p.read_bytes() for n, p in local.items()}

    def base(dtype: torch.dtype) -> Any:
        return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)

    assert_adapter_computes_the_merged_model(base, tmp_path / "pulled", out / "merged")


def test_a_registry_refusing_the_credentials_fails_before_training_with_exit_2(
        tiny_model: Path, tmp_path: Path, oci_registry: Registry, secrets_dir: Path) -> None:
    _registry_secret(secrets_dir, oci_registry, password="wrong")
    uri = f"oci://{oci_registry.host()}/adapters/refused:v1"
    finished = run(tiny_spec(tiny_model, output={"destinations": [
        {"uri": uri, "plainHttp": True, "credentialsSecret": SECRET}]}), tmp_path / "out")
    assert finished.result.exit_code == EXIT_INVALID_INPUT
    assert f"output.destinations[0] {uri}: a test push refused (HTTP 401); check the Secret {SECRET}" \
        in finished.recorder.message(3)
    assert finished.status.artifacts is None


def test_a_registry_secret_for_another_registry_is_named(
        tiny_model: Path, tmp_path: Path, oci_registry: Registry, secrets_dir: Path) -> None:
    _registry_secret(secrets_dir, oci_registry)
    uri = f"oci://localhost:{oci_registry.port}/adapters/other:v1"  # the Secret names 127.0.0.1:<port>
    finished = run(tiny_spec(tiny_model, output={"destinations": [
        {"uri": uri, "plainHttp": True, "credentialsSecret": SECRET}]}), tmp_path / "out")
    assert finished.result.exit_code == EXIT_INVALID_INPUT
    assert (f"Secret {SECRET}: .dockerconfigjson has no credentials for localhost:{oci_registry.port} "
            f"(its auths: 127.0.0.1:{oci_registry.port})") in finished.recorder.message(3)

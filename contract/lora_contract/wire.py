"""What the operator's Job and the trainer process agree on outside the API types: exit codes, the
environment and mount paths the trainer is given, and how both write times.

The Job's pod-failure policy (operator) and the trainer's exits (``lora-trainer run``) must use the
same numbers, and the trainer must look where the operator mounts, so both read them here.
"""

import signal
from datetime import UTC, datetime

EXIT_OK = 0
# Failed; a retry may help (a network error, a lost node): counts against spec.runtime.backoffLimit.
EXIT_FAILED = 1
# The spec or its data cannot work as given: the Job fails at once instead of spending its retries.
EXIT_INVALID_INPUT = 2
# Stopped by SIGTERM or SIGINT (a pod deleted, a node drained, a preemption, Kueue suspending the Job),
# after saving a checkpoint where training was. 128 + SIGTERM, the code a process killed by SIGTERM
# reports too, so a trainer stopped before its handler was installed means the same. The Job ignores
# such a pod failure (no backoffLimit count) and its retry resumes from that checkpoint.
EXIT_INTERRUPTED = 128 + signal.SIGTERM

# How the operator and the trainer write times (status, events, manifests): RFC 3339, UTC, whole seconds.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(when: datetime | None = None) -> str:
    """``when`` (default: now) as TIMESTAMP_FORMAT."""
    return (when or datetime.now(UTC)).strftime(TIMESTAMP_FORMAT)


# The progress endpoint the trainer reports to, the token it reports with (its projected volume) and the CA of
# the endpoint's certificate.
REPORT_URL_ENV = "LORA_REPORT_URL"
REPORT_TOKEN_ENV = "LORA_REPORT_TOKEN"
REPORT_CA_ENV = "LORA_REPORT_CA"
TOKEN_MOUNT = "/var/run/lora/token"
TOKEN_FILE = f"{TOKEN_MOUNT}/token"
# Where ConfigMap datasets are mounted: <dir>/<configmap name>/<key>.
CONFIGMAP_DIR_ENV = "LORA_CONFIGMAP_DIR"
CONFIGMAP_DIR = "/etc/lora/datasets"

# Where the operator mounts output.destinations[i].credentialsSecret in the trainer: <dir>/<i>/<key>, with these
# keys: an s3:// destination's, an oci:// destination's kubernetes.io/dockerconfigjson key, or an hf:// one's token.
DESTINATION_SECRETS_DIR = "/var/run/lora/destinations"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
DOCKER_CONFIG_KEY = ".dockerconfigjson"
HF_TOKEN_KEY = "HF_TOKEN"


def destination_secret_keys(uri: str) -> tuple[str, ...]:
    """The keys of a destination's credentialsSecret the trainer reads, by the uri's scheme."""
    if uri.startswith("s3://"):
        return S3_SECRET_KEYS
    return (HF_TOKEN_KEY,) if uri.startswith("hf://") else (DOCKER_CONFIG_KEY,)
# The trainer's env: that folder, and the pvc://<claim>/<subPath> of an output volume (its adapter's URI).
DESTINATION_SECRETS_ENV = "LORA_DESTINATION_SECRETS_DIR"
OUTPUT_URI_ENV = "LORA_OUTPUT_URI"

# A run over several pods (resources.nodes > 1): torchrun's settings, under the names Kubeflow's torch runtime
# gives them (torchrun reads PET_<OPTION> as its --<option>), and the port rank 0's pod listens on for the others.
NNODES_ENV = "PET_NNODES"
NPROC_PER_NODE_ENV = "PET_NPROC_PER_NODE"
NODE_RANK_ENV = "PET_NODE_RANK"
MASTER_ADDR_ENV = "PET_MASTER_ADDR"
MASTER_PORT_ENV = "PET_MASTER_PORT"
RENDEZVOUS_PORT = 29500
GATHER_PORT = RENDEZVOUS_PORT + 1  # rank 0's pod, where the others check in first (lora_trainer.distributed.gather)

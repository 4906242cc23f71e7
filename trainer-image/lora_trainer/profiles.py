"""Hardware profiles: the values unset LoRA fields take on a GPU or on a CPU.

Set values always win (``LoraSettings``' docstring). The GPU profile trains in bf16 where the GPU
supports it (its range does not overflow like fp16's), else fp16. The resolved precision is also
the dtype the base model is loaded in, so a model trained in fp16 is loaded, merged and reloaded
in fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_contract.api import LoraSettings, ResourceSpec
from lora_trainer.errors import InvalidInput


@dataclass(frozen=True)
class Profile:
    name: str
    batch_size: int
    gradient_accumulation_steps: int
    epochs: float
    half_precision: bool  # bf16 where supported, else fp16


GPU_PROFILE = Profile("gpu", batch_size=4, gradient_accumulation_steps=8, epochs=3, half_precision=True)
CPU_PROFILE = Profile("cpu", batch_size=1, gradient_accumulation_steps=8, epochs=1, half_precision=False)


@dataclass(frozen=True)
class Resolved:
    """The hyper-parameters in force and which ones came from the profile."""

    profile: str
    batch_size: int
    gradient_accumulation_steps: int
    epochs: float
    fp16: bool
    bf16: bool
    from_profile: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32


def resolve(lora: LoraSettings, cuda: bool, bf16_supported: bool = False) -> Resolved:
    profile = GPU_PROFILE if cuda else CPU_PROFILE
    from_profile = tuple(name for name, value in (
        ("batchSize", lora.batch_size), ("gradientAccumulationSteps", lora.gradient_accumulation_steps),
        ("epochs", lora.epochs), ("precision", True if lora.bf16 else lora.fp16),
    ) if value is None)
    notes: tuple[str, ...] = ()
    if cuda:
        if lora.bf16 and not bf16_supported:
            raise InvalidInput("lora.bf16 is set but this GPU has no bfloat16 support (compute capability 8.0 or "
                               "newer, e.g. A100, L4, H100); unset lora.bf16 or set lora.fp16 instead")
        unset = lora.bf16 is None and lora.fp16 is None
        bf16 = bool(lora.bf16) or (unset and profile.half_precision and bf16_supported)
        fp16 = not bf16 and (profile.half_precision if lora.fp16 is None else lora.fp16)
    else:
        fp16 = bf16 = False
        if lora.fp16 or lora.bf16:
            notes = ("fp16/bf16 need a GPU: training in fp32 on CPU",)
    return Resolved(
        profile=profile.name,
        batch_size=lora.batch_size or profile.batch_size,
        gradient_accumulation_steps=lora.gradient_accumulation_steps or profile.gradient_accumulation_steps,
        epochs=lora.epochs or profile.epochs,
        fp16=fp16, bf16=bf16, from_profile=from_profile, notes=notes,
    )


def check_requested_gpus(resources: ResourceSpec, visible: int) -> str | None:
    """A run that asked for GPUs but sees none (a node without the NVIDIA container runtime, a pod without
    the runtime class that provides it) would otherwise train on CPU, silently and for days on a large
    model: it fails at once unless the spec allows CPU. Returns a note when it trains on CPU anyway."""
    if resources.gpu == 0 or visible > 0:
        return None
    asked = f"the run asked for {resources.gpu} GPU(s) ({resources.gpu_resource_name}) but the trainer sees none"
    if resources.cpu_fallback:
        return f"{asked}: training on CPU (resources.cpuFallback)"
    raise InvalidInput(f"{asked}: the node lacks the NVIDIA container runtime, or the pod needs its runtime "
                       "class; set resources.gpu: 0 to train on CPU on purpose, or resources.cpuFallback: true "
                       "to allow it")


def for_this_machine(lora: LoraSettings) -> Resolved:
    cuda = torch.cuda.is_available()
    return resolve(lora, cuda, cuda and torch.cuda.is_bf16_supported(including_emulation=False))

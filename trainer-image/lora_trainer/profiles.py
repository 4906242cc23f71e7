"""Hardware profiles: the values unset LoRA fields take on a GPU or on a CPU.

Set values always win (``LoraSettings``' docstring). Both profiles train in bf16 where the hardware
computes it natively: a GPU of compute capability 8.0 or newer (its range does not overflow like
fp16's; older GPUs get fp16), a CPU with AVX512-BF16 or AMX (its bf16 matrix products ran 1.9x faster
than fp32 on this project's EPYC, docs/performance.md; other CPUs keep fp32, as emulated bf16 is
slower). The resolved precision is also the dtype the base model is loaded in, so a model trained in
bf16 is loaded, graded before and after, merged and reloaded in bf16.
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
    half_precision: bool  # bf16 where native, else fp16 on a GPU and fp32 on a CPU


GPU_PROFILE = Profile("gpu", batch_size=4, gradient_accumulation_steps=8, epochs=3, half_precision=True)
CPU_PROFILE = Profile("cpu", batch_size=1, gradient_accumulation_steps=8, epochs=1, half_precision=True)


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
    """``bf16_supported``: the device computes bf16 natively (``native_bf16``)."""
    profile = GPU_PROFILE if cuda else CPU_PROFILE
    from_profile = tuple(name for name, value in (
        ("batchSize", lora.batch_size), ("gradientAccumulationSteps", lora.gradient_accumulation_steps),
        ("epochs", lora.epochs), ("precision", True if lora.bf16 else lora.fp16),
    ) if value is None)
    notes: list[str] = []
    if lora.bf16 and not bf16_supported:
        if cuda:
            raise InvalidInput("lora.bf16 is set but this GPU has no bfloat16 support (compute capability 8.0 or "
                               "newer, e.g. A100, L4, H100); unset lora.bf16 or set lora.fp16 instead")
        notes.append("bf16 needs a CPU with AVX512-BF16 or AMX (emulated it is slower than fp32): training in fp32")
    unset = lora.bf16 is None and lora.fp16 is None
    bf16 = bf16_supported and (bool(lora.bf16) or (unset and profile.half_precision))
    if cuda:
        fp16 = not bf16 and (profile.half_precision if lora.fp16 is None else lora.fp16)
    else:
        fp16 = False
        if lora.fp16:
            notes.append("fp16 needs a GPU: training in fp32 on CPU")
    return Resolved(
        profile=profile.name,
        batch_size=lora.batch_size or profile.batch_size,
        gradient_accumulation_steps=lora.gradient_accumulation_steps or profile.gradient_accumulation_steps,
        epochs=lora.epochs or profile.epochs,
        fp16=fp16, bf16=bf16, from_profile=from_profile, notes=tuple(notes),
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
                       "class (resources.runtimeClassName, e.g. nvidia); set resources.gpu: 0 to train on CPU on "
                       "purpose, or resources.cpuFallback: true to allow it")


def native_bf16(cuda: bool) -> bool:
    """bf16 computed by the hardware, not emulated. On CPUs torch only has private probes for it; a torch
    without them counts as no support (fp32, the safe side)."""
    if cuda:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and probe() for probe in probes)


def for_this_machine(lora: LoraSettings) -> Resolved:
    cuda = torch.cuda.is_available()
    return resolve(lora, cuda, native_bf16(cuda))

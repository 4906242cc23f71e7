"""Choosing between DDP and FSDP (lora_trainer.sharding.choose) and the weight estimate it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lora_contract.api import ModelSpec
from lora_trainer.checkpoints import check_strategy
from lora_trainer.errors import InvalidInput
from lora_trainer.sharding import choose, fsdp_arguments, weight_bytes

GB = 10**9


@pytest.mark.parametrize(("asked", "world", "weights", "memory", "expected"), [
    ("auto", 1, 140 * GB, 80 * GB, "single"),  # nothing to share the work with
    ("fsdp", 1, None, None, "single"),
    ("auto", 8, 16 * GB, 80 * GB, "ddp"),  # an 8B in bf16 on 80 GB GPUs
    ("auto", 8, 40 * GB, 80 * GB, "ddp"),  # exactly half: fits, the rest for activations
    ("auto", 8, 41 * GB, 80 * GB, "fsdp"),
    ("auto", 8, 140 * GB, 80 * GB, "fsdp"),  # a 70B in bf16
    ("auto", 2, 140 * GB, None, "ddp"),  # CPU: nothing to fit
    ("auto", 2, None, 80 * GB, "ddp"),  # size unknown: the model's loading reports why
    ("ddp", 8, 140 * GB, 80 * GB, "ddp"),  # asked for: the user's call
    ("fsdp", 2, 1 * GB, 80 * GB, "fsdp"),
])
def test_choose(asked: str, world: int, weights: int | None, memory: int | None, expected: str) -> None:
    assert choose(asked, world, weights, memory).name == expected


def test_auto_says_why() -> None:
    reason = choose("auto", 8, 140 * GB, 80 * GB).reason
    assert reason == ("auto: the weights, 140.0 GB, take over 50% of one 80 GB GPU: sharded over 8 processes, "
                      "about 17.5 GB each")
    assert choose("fsdp", 1, None, None).reason == "one process: nothing to shard (resources.strategy: fsdp)"


def test_weight_bytes_counts_the_real_parameters(tiny_model: Path) -> None:
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    spec = ModelSpec(path=str(tiny_model))
    assert weight_bytes(spec, torch.bfloat16, cuda=False) == 2 * real
    assert weight_bytes(spec, torch.float32, cuda=False) == 4 * real
    # 4-bit on a GPU: the linear layers but the output head at half a byte, the rest in the compute dtype
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    four = ModelSpec(path=str(tiny_model), quantization="4bit")
    assert weight_bytes(four, torch.bfloat16, cuda=True) == round(linear * 0.5 + (real - linear) * 2)
    assert weight_bytes(four, torch.bfloat16, cuda=False) == 2 * real  # no bitsandbytes without CUDA
    assert weight_bytes(ModelSpec(path=str(tiny_model / "missing")), torch.float32, cuda=False) is None


def test_fsdp_wraps_each_decoder_layer(tiny_model: Path) -> None:
    config = fsdp_arguments(AutoModelForCausalLM.from_pretrained(tiny_model))["fsdp_config"]
    assert config["version"] == 2 and config["state_dict_type"] == "FULL_STATE_DICT"
    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]


@pytest.mark.parametrize(("saved", "sharded", "refused"), [
    ("optimizer.pt", False, None), ("optimizer.bin", True, None),
    ("optimizer.bin", False, "saved by FSDP training and this attempt trains with one process or DDP"),
    ("optimizer.pt", True, "saved by one process or DDP training and this attempt trains with FSDP"),
])
def test_a_checkpoint_resumes_only_under_its_kind_of_training(tmp_path: Path, saved: str, sharded: bool,
                                                              refused: str | None) -> None:
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / saved).write_bytes(b"")
    if refused is None:
        check_strategy(checkpoint, sharded)
        return
    with pytest.raises(InvalidInput, match=refused):
        check_strategy(checkpoint, sharded)

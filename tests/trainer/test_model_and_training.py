"""Steps 2-4 in isolation: model sources, LoRA targets, loss masking, packing, profiles, divergence, resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lora_contract.api import LoraSettings, ModelSpec
from lora_trainer.callbacks import ProgressCallback
from lora_trainer.checkpoints import MARKER, resume_point, write_marker
from lora_trainer.context import PreparedData, RunContext
from lora_trainer.distributed import World, per_rank_batch
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.formats import IGNORE_INDEX, Example, encode, features, render_prompt
from lora_trainer.modeling import apply_lora, linear_module_names, load_model, load_tokenizer, resolve_source
from lora_trainer.profiles import resolve
from lora_trainer.steps import training_config
from lora_trainer.steps.saving import verify_saved
from lora_trainer.steps.training_config import collator, optimizer_steps
from tests.trainer.conftest import tiny_spec


def test_model_sources_resolve_to_a_folder(tmp_path: Path, tiny_model: Path) -> None:
    assert resolve_source(ModelSpec(hubId="org/model", revision="v1")).kwargs() == {
        "trust_remote_code": False, "revision": "v1"}
    package = resolve_source(ModelSpec(package="lora_trainer", ggufFile=None))
    assert Path(package.location).name == "lora_trainer"
    with pytest.raises(InvalidInput, match="not installed"):
        resolve_source(ModelSpec(package="no_such_package_here"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    gguf = resolve_source(ModelSpec(path=str(tmp_path / "m.gguf")))
    assert (gguf.location, gguf.gguf_file) == (str(tmp_path), "m.gguf")
    with pytest.raises(InvalidInput, match=r"'x.gguf' is not in .* \(found: m.gguf\)"):
        resolve_source(ModelSpec(path=str(tmp_path), ggufFile="x.gguf"))
    with pytest.raises(InvalidInput, match="does not exist"):
        resolve_source(ModelSpec(path=str(tmp_path / "nope")))


def test_a_tokenizer_without_chat_template_gets_chatml(tiny_model: Path, tiny_tokenizer: Any, tmp_path: Path) -> None:
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    plain.save_pretrained(tmp_path)
    tokenizer, notes = load_tokenizer(ModelSpec(path=str(tmp_path)))
    assert notes == ["tokenizer has no chat template: using ChatML"]
    assert render_prompt(tokenizer, [{"role": "user", "content": "Hi"}]) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_quantization_falls_back_to_full_precision_on_cpu(tiny_model: Path) -> None:
    loaded = load_model(ModelSpec(path=str(tiny_model), quantization="4bit"), torch.float32)
    assert not loaded.quantized and next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.notes == ["quantization 4bit needs a CUDA GPU: loaded in full precision on CPU"]


def test_unknown_target_modules_list_the_valid_names(tiny_model: Path) -> None:
    loaded = load_model(ModelSpec(path=str(tiny_model)), torch.float32)
    names = "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    assert ", ".join(linear_module_names(loaded.model)) == names
    with pytest.raises(InvalidInput, match=rf"\['query', 'val'\] match no linear module .* valid names: {names}"):
        apply_lora(loaded, LoraSettings(targetModules=["q_proj", "query", "val"]))


def test_all_linear_adapts_every_projection_but_not_the_head(tiny_model: Path) -> None:
    loaded = load_model(ModelSpec(path=str(tiny_model)), torch.float32)
    model = apply_lora(loaded, LoraSettings(targetModules=["all-linear"]))
    adapted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _encoded(tokenizer: Any, prompt: str, answer: str) -> Example:
    example = Example("s", "l", [{"role": "user", "content": prompt}], answer)
    encode(example, tokenizer)
    return example


def test_completion_only_loss_masks_every_prompt_token(tiny_tokenizer: Any) -> None:
    example = _encoded(tiny_tokenizer, "What is a Sprout?", "A Sprout is a new minion.")
    row = features(example, max_length=512, completion_only=True)
    assert row is not None
    n_prompt = len(example.prompt_ids)
    assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:] == example.completion_ids
    assert tiny_tokenizer.decode(row["input_ids"][n_prompt:]) == "A Sprout is a new minion.<|im_end|>\n"
    full = features(example, max_length=512, completion_only=False)
    assert full is not None and full["labels"] == full["input_ids"]
    cut = features(example, max_length=n_prompt + 2, completion_only=True)
    assert cut is not None and len(cut["input_ids"]) == len(cut["labels"]) == n_prompt + 2
    assert features(example, max_length=n_prompt, completion_only=True) is None


def test_packing_is_padding_free_and_keeps_items_apart(tiny_model: Path, tiny_tokenizer: Any) -> None:
    model = load_model(ModelSpec(path=str(tiny_model)), torch.float32).model.eval()
    model.config.use_cache = False  # as the Trainer sets it (TrainingArguments.use_cache); a cache disables packing
    rows = [features(_encoded(tiny_tokenizer, q, a), 512, True) for q, a in [
        ("What is a Sprout?", "A new minion with under 100 XP."),
        ("What are embers?", "Compute credit: 40 a week, spent on forges."),
    ]]
    packed = collator(tiny_tokenizer, packing=True)(rows)
    padded = collator(tiny_tokenizer, packing=False)(rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows)) and "attention_mask" not in packed
    assert padded["input_ids"].shape[0] == 2 and (padded["labels"] == IGNORE_INDEX).any()
    with torch.no_grad():
        packed_loss = model(**packed).loss
        separate = [model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])) for r in rows]
    # Token-weighted mean of the separate losses: equal only if attention never crosses items.
    counts = [sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in rows]
    expected = sum(s.loss * c for s, c in zip(separate, counts, strict=True)) / sum(counts)
    assert packed_loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_profiles_fill_only_unset_fields() -> None:
    cpu = resolve(LoraSettings(), cuda=False)
    assert (cpu.profile, cpu.batch_size, cpu.gradient_accumulation_steps, cpu.epochs, cpu.fp16) == \
        ("cpu", 1, 8, 1, False)
    assert cpu.from_profile == ("batchSize", "gradientAccumulationSteps", "epochs", "precision")
    gpu = resolve(LoraSettings(batchSize=2), cuda=True)
    assert (gpu.profile, gpu.batch_size, gpu.gradient_accumulation_steps, gpu.epochs, gpu.fp16) == \
        ("gpu", 2, 8, 3, True)
    assert "batchSize" not in gpu.from_profile
    ampere = resolve(LoraSettings(), cuda=True, bf16_supported=True)
    assert ampere.bf16 and not ampere.fp16 and ampere.dtype == torch.bfloat16 and "precision" in ampere.from_profile
    fp16 = resolve(LoraSettings(fp16=True), cuda=True, bf16_supported=True)
    assert fp16.fp16 and not fp16.bf16  # a set value wins over the profile's bf16
    bf16 = resolve(LoraSettings(bf16=True), cuda=True, bf16_supported=True)
    assert bf16.bf16 and not bf16.fp16 and "precision" not in bf16.from_profile
    with pytest.raises(InvalidInput, match=r"lora\.bf16 is set but this GPU has no bfloat16 support"):
        resolve(LoraSettings(bf16=True), cuda=True, bf16_supported=False)
    no_gpu = resolve(LoraSettings(fp16=True), cuda=False, bf16_supported=True)
    assert not no_gpu.fp16 and not no_gpu.bf16 and no_gpu.notes == ("fp16 needs a GPU: training in fp32 on CPU",)


def test_cpu_profile_trains_in_bf16_only_where_the_cpu_computes_it() -> None:
    native = resolve(LoraSettings(), cuda=False, bf16_supported=True)
    assert native.bf16 and native.dtype == torch.bfloat16 and "precision" in native.from_profile
    assert resolve(LoraSettings(bf16=False), cuda=False, bf16_supported=True).dtype == torch.float32
    emulated = resolve(LoraSettings(bf16=True), cuda=False, bf16_supported=False)
    assert emulated.dtype == torch.float32 and emulated.notes == (
        "bf16 needs a CPU with AVX512-BF16 or AMX (emulated it is slower than fp32): training in fp32",)


def test_optimizer_steps_match_the_trainer() -> None:
    assert optimizer_steps(100, 4, 2, 1.5, None) == math.ceil(1.5 * math.ceil(25 / 2))
    assert optimizer_steps(100, 4, 2, 1.5, 7) == 7


def test_several_visible_gpus_in_one_process_train_on_one_never_dataparallel(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = training_config.training_arguments

    def two_gpus(*args: Any) -> Any:
        arguments = original(*args)
        _ = arguments.n_gpu  # sets the devices up, then pretend two were found
        arguments._n_gpu = 2
        return arguments

    monkeypatch.setattr(training_config, "training_arguments", two_gpus)
    ctx = _training_context(tiny_model, tmp_path)
    message = training_config.run(ctx)
    assert "batch 4 x accumulation 1 = 4 items/step, 4 optimizer steps (1 epochs of 16 items)" in message
    assert ctx.training_plan.args.n_gpu == 1 and ctx.training_plan.args.train_batch_size == 4


@pytest.mark.parametrize(("batch", "accumulation", "world", "split"), [
    (4, 1, 2, (2, 1)), (1, 8, 2, (1, 4)), (4, 8, 4, (4, 2)), (6, 1, 4, None), (3, 4, 4, (3, 1)), (4, 3, 2, (3, 2)),
])  # fmt: skip
def test_the_global_batch_is_split_over_the_processes(batch, accumulation, world, split) -> None:
    if split is None:
        with pytest.raises(InvalidInput, match="6 items cannot be split evenly over 4 processes"):
            per_rank_batch(batch, accumulation, world)
        return
    device, steps = per_rank_batch(batch, accumulation, world)
    assert (device, steps) == split and device * steps * world == batch * accumulation and device <= batch


def test_a_data_parallel_worker_trains_the_one_process_steps_on_its_share(tiny_model: Path, tmp_path: Path) -> None:
    ctx = _training_context(tiny_model, tmp_path, World(rank=1, size=2, local_rank=1))
    message = training_config.run(ctx)
    assert "batch 2 x accumulation 1 x 2 processes = 4 items/step, 4 optimizer steps" in message
    args = ctx.training_plan.args
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_steps) == (2, 1, 4)


def _training_context(tiny_model: Path, tmp_path: Path, world: World | None = None) -> RunContext:
    items = [Example("s", f"s:{i}", [], "answer", prompt_ids=[1, 2], completion_ids=[3, 4]) for i in range(16)]
    spec = tiny_spec(tiny_model, lora={"maxSteps": None, "epochs": 1})
    model = apply_lora(load_model(spec.model, torch.float32), spec.lora)
    return RunContext(spec=spec, output_dir=tmp_path, emit=print, data=PreparedData(items, [], {}), model=model,
                      world=world or World())


def _state(losses: list[float], step: int) -> SimpleNamespace:
    history = [{"loss": value, "step": i + 1} for i, value in enumerate(losses)]
    return SimpleNamespace(log_history=history, global_step=step, max_steps=10, epoch=0.5,
                           num_input_tokens_seen=0)


def test_divergence_and_nan_stop_training() -> None:
    events: list[Any] = []
    callback = ProgressCallback(events.append, "fp", divergence_factor=10)
    callback.on_log(None, _state([2.0, 1.5], 2), None, logs={"loss": 1.5, "learning_rate": 1e-4})
    assert events[0].step == 2 and events[0].loss == 1.5 and events[0].total_steps == 10
    with pytest.raises(InvalidInput, match=r"exceeds 10 x the first logged loss 2\.0000"):
        callback.on_log(None, _state([2.0, 25.0], 3), None, logs={"loss": 25.0})
    with pytest.raises(InvalidInput, match="loss is nan"):
        callback.on_log(None, _state([2.0, math.nan], 3), None, logs={"loss": math.nan})
    with pytest.raises(InvalidInput, match="eval loss is inf at step 3"):
        callback.on_log(None, _state([2.0], 3), None, logs={"eval_loss": math.inf})


def _checkpoint(folder: Path, step: int, fingerprint: str | None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if fingerprint:
        (path / MARKER).write_text(json.dumps({"fingerprint": fingerprint, "step": step}))
    return path


def test_resume_point_is_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert resume_point(tmp_path / "none", "fp") is None
    _checkpoint(tmp_path, 2, "fp")
    newest = _checkpoint(tmp_path, 10, "fp")
    torn = _checkpoint(tmp_path, 12, None)  # killed while saving
    garbled = _checkpoint(tmp_path, 14, None)
    (garbled / MARKER).write_text('{"fingerprint": "f')  # written by a version without atomic markers
    assert resume_point(tmp_path, "fp") == newest
    assert not torn.exists() and not garbled.exists()
    write_marker(newest, "fp", 10)
    assert [p.name for p in newest.iterdir()] == [MARKER]  # no temporary file left behind
    with pytest.raises(InvalidInput, match="checkpoints of a different spec"):
        resume_point(tmp_path, "another")


def test_saving_verification_catches_a_tensor_that_differs(tiny_model: Path, tmp_path: Path) -> None:
    model = load_model(ModelSpec(path=str(tiny_model)), torch.float32).model
    model.save_pretrained(tmp_path)
    state = model.state_dict()
    assert verify_saved(tmp_path, state, "merged model") == len(state) - 1  # the tied head is not saved twice
    tampered = {**state, "model.norm.weight": state["model.norm.weight"] + 1}
    with pytest.raises(StepError, match=r"model\.safetensors tensor model\.norm\.weight differs"):
        verify_saved(tmp_path, tampered, "merged model")
    with pytest.raises(StepError, match="no weights were written"):
        verify_saved(tmp_path / "empty", state, "adapter")


def test_disk_check_counts_what_an_earlier_attempt_wrote_once(tmp_path: Path) -> None:
    parts = training_config.bytes_to_write(trainable=1_000_000, frozen=100_000_000, dtype_bytes=2, merge=True,
                                           checkpoints_kept=3)
    assert parts == {"checkpoints": 4 * 12_000_000, "adapter": 4_000_000, "merged model": 200_000_000}
    need = round(sum(parts.values()) * training_config.DISK_MARGIN)
    with pytest.raises(InvalidInput, match=r"has 200 MB free .* writes about 277 MB \(checkpoints 48 MB, "
                                           r"adapter 4 MB, merged model 200 MB, plus 10% margin\)"):
        training_config.check_disk_space(tmp_path, parts, free=200_000_000)
    (tmp_path / "checkpoints" / "checkpoint-100").mkdir(parents=True)
    with open(tmp_path / "checkpoints" / "checkpoint-100" / "optimizer.pt", "wb") as sparse:
        sparse.truncate(need - 200_000_000)
    assert training_config.check_disk_space(tmp_path, parts, free=200_000_000) == (
        "disk: about 200 MB to write (checkpoints 48 MB, adapter 4 MB, merged model 200 MB), 200 MB free")
    assert training_config.bytes_to_write(1, 10, 4, merge=False, checkpoints_kept=1)["merged model"] == 0


def test_a_run_that_asked_for_gpus_and_sees_none_fails_unless_it_allows_the_cpu() -> None:
    from lora_contract.api import ResourceSpec
    from lora_trainer.profiles import check_requested_gpus

    assert check_requested_gpus(ResourceSpec(gpu=0), visible=0) is None
    assert check_requested_gpus(ResourceSpec(gpu=2), visible=1) is None
    with pytest.raises(InvalidInput, match=r"asked for 1 GPU\(s\) \(nvidia.com/gpu\) but the trainer sees none: the "
                                           r"node lacks the NVIDIA container runtime.*resources.gpu: 0"):
        check_requested_gpus(ResourceSpec(gpu=1), visible=0)
    assert "training on CPU" in check_requested_gpus(ResourceSpec(gpu=1, cpu_fallback=True), visible=0)

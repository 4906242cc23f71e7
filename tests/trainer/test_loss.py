"""The sliced-logits loss against the model's own: same value, same gradients, packed or padded."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from lora_trainer.formats import IGNORE_INDEX
from lora_trainer.loss import LabelledLogitsTrainer, labelled_logits, loss_mask
from lora_trainer.steps.training_config import collator


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                lora_dropout=0.0, init_lora_weights=False))
    model.eval()  # no dropout: the two losses see the same network
    model.config.use_cache = False  # as the Trainer sets it (TrainingArguments.use_cache)
    return model


def _rows() -> list[dict[str, list[int]]]:
    """Items of different lengths whose prompt (the first half) carries no label."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in (9, 23, 14, 31):
        ids = torch.randint(1, 97, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2:]})
    return rows


def _trainer(model: torch.nn.Module, tmp_path) -> LabelledLogitsTrainer:
    return LabelledLogitsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                     report_to="none"))


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_loss_mask_marks_the_positions_whose_next_token_is_a_label():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX]])
    assert loss_mask(labels).tolist() == [[False, True, True, False, False]]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sliced_loss_and_gradients_equal_the_models_own(tmp_path, packed):
    model = _model()
    trainer = _trainer(model, tmp_path)
    batch = _packed(_rows()) if packed else _padded(_rows())

    own = model(**batch).loss
    own.backward()
    own_grads = _grads(model)
    model.zero_grad()
    ours = trainer.compute_loss(model, batch)
    ours.backward()
    assert torch.allclose(ours, own, atol=1e-6), (ours, own)
    for a, b in zip(_grads(model), own_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_model_without_logits_to_keep_gets_the_same_labelled_logits():
    model = _model()
    batch = _padded(_rows())
    labels = batch.pop("labels")

    class Unsliced(torch.nn.Module):  # a forward that knows nothing of logits_to_keep
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    sliced, targets = labelled_logits(model, labels, batch)
    full, same_targets = labelled_logits(Unsliced(), labels, batch)
    assert torch.equal(targets, same_targets) and torch.allclose(sliced, full, atol=1e-5)


def test_a_step_count_weighs_every_token_of_the_optimizer_step_alike(tmp_path):
    """With gradient accumulation the Trainer passes the step's label count: the loss is a sum over it."""
    model = _model()
    trainer = _trainer(model, tmp_path)
    batch = _padded(_rows())
    labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    mean = trainer.compute_loss(model, batch)
    scaled = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(3 * labels))
    assert torch.allclose(scaled * 3, mean, atol=1e-6)
    assert trainer.loss_is_scaled_for_ga


def test_packing_is_exact_attention_never_crosses_items(tmp_path):
    """Position ids that restart per item make the packed loss the padded batch's loss (transformers'
    packed-sequence mask, which it applies only without a KV cache): packing changes speed, not training."""
    model = _model()
    rows = _rows()
    packed = _trainer(model, tmp_path).compute_loss(model, _packed(rows))
    assert torch.allclose(packed, model(**_padded(rows)).loss, atol=1e-5)
    assert not torch.allclose(model(**_packed(rows), use_cache=True).loss, packed, atol=1e-3)  # the trap


def _padded(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    return {
        "input_ids": torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                        for r in rows]),
        "labels": torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in rows]),
    }


def _packed(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    return collator(None, packing=True)(rows)

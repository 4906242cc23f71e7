"""The causal-LM loss with logits computed only at the positions that carry a label.

Why: the LM head (vocabulary x hidden) and the float32 log-softmax over the vocabulary run on every
position of every row in the model's own loss, although with answer-only loss most positions carry no
label (the prompt, the chat template, padding). For SmolLM2-135M the head is a fifth of the model's
multiply-adds per token. Transformers' ``logits_to_keep`` accepts a boolean (batch, sequence) mask and
projects only the kept hidden states; the loss below is then the same token-weighted cross-entropy as
the model's (``ForCausalLMLoss``), so training is unchanged (``tests/trainer/test_loss.py`` checks loss
and gradients against the model's own).

A model whose forward has no ``logits_to_keep``, or slices by it some other way (a handful of
multimodal ones), gets all its logits computed and the same loss from the labelled ones.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from lora_trainer.formats import IGNORE_INDEX


def loss_mask(labels: torch.Tensor) -> torch.Tensor:
    """True at position p of a row when the token at p + 1 is a label: the logits the loss reads."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def _slices_logits(model: Any) -> bool:
    model = getattr(model, "module", model)  # DataParallel/DDP: the wrapped model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def labelled_logits(model: Any, labels: torch.Tensor, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets), one row per label of ``labels``, in row-major order.

    No KV cache, whatever the model's config says: with one, transformers does not look for packed
    items in the position ids, and their tokens would attend across items."""
    mask = loss_mask(labels)
    targets = labels[:, 1:][mask[:, :-1]]
    if _slices_logits(model):
        logits = model(**inputs, use_cache=False, logits_to_keep=mask).logits
        if logits.dim() == 2 and logits.shape[0] == targets.numel():
            return logits, targets
    return model(**inputs, use_cache=False).logits[mask], targets


def completion_loss(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
    """Cross-entropy over ``targets``, summed and divided by the batch's label count when the Trainer gives
    one (gradient accumulation weighs every token alike), else averaged, as the model's own loss does."""
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    if num_items_in_batch is None:
        return loss / max(1, targets.numel())
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class LabelledLogitsTrainer(Trainer):
    """A Trainer whose loss computes logits only where a label is (``labelled_logits``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # so the Trainer counts the labels of a whole optimizer step

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        logits, targets = labelled_logits(model, labels, inputs)
        loss = completion_loss(logits, targets, num_items_in_batch)
        # Read by ``training_step`` after this call: a loss divided by the step's label count needs no
        # further division by the accumulation steps.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the count is summed over processes, as the Trainer's
        return (loss, {"logits": logits}) if return_outputs else loss

"""Per-item attention over packed rows against transformers' SDPA: same outputs, same gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lora_trainer import packed_attention
from lora_trainer.packed_attention import item_bounds, per_item_attention
from tests.trainer.test_loss import _grads, _model, _packed, _padded, _rows


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), _grads(model)


def test_item_bounds_split_where_positions_restart() -> None:
    assert item_bounds(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [0, 3, 5, 9]
    assert item_bounds(torch.tensor([[0, 1, 2, 3]])) == [0, 4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_per_item_attention_equals_sdpa(dtype: torch.dtype, layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model().to(dtype)
    batch = (_packed if layout == "packed" else _padded)(_rows())
    expected, expected_grads = _loss_and_grads(model, batch)
    fallbacks: list[int] = []
    sdpa = packed_attention.sdpa_attention_forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        fallbacks.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(packed_attention, "sdpa_attention_forward", counted)
    with per_item_attention(model, use=True) as switched:
        assert switched and model.get_base_model().config._attn_implementation != "sdpa"
        loss, grads = _loss_and_grads(model, batch)
    assert model.get_base_model().config._attn_implementation == "sdpa"  # restored: never saved with the model
    assert bool(fallbacks) == (layout == "padded")  # packed rows take the per-item path, padded batches SDPA's
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: SDPA's kernel rounds, ours computes in fp32
    assert torch.allclose(loss.float(), expected.float(), atol=tolerance), (loss, expected)
    for ours, theirs in zip(grads, expected_grads, strict=True):
        assert torch.allclose(ours.float(), theirs.float(), atol=tolerance, rtol=tolerance)


def test_a_model_that_does_not_run_sdpa_is_left_alone() -> None:
    model = _model()
    model.get_base_model().set_attn_implementation("eager")
    with per_item_attention(model, use=True) as switched:
        assert not switched and model.get_base_model().config._attn_implementation == "eager"

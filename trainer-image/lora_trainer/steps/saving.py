"""Step 5, saving: adapter, tokenizer, merged model, manifest; then re-read and compare them.

The logits of the trained model on one probe input are kept for step 6, which checks that the
reloaded artifact computes the same function.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from lora_contract.api import SERVING_DEFAULT_MAX_LORA_RANK, SERVING_MAX_LORA_RANKS, Artifacts
from lora_contract.wire import OUTPUT_URI_ENV, timestamp
from lora_trainer.context import RunContext
from lora_trainer.errors import StepError
from lora_trainer.layout import sha256, staging, write_atomically
from lora_trainer.modeling import load_model, resolve_source

PROBE_TOKENS = 64


def manifest(root: Path, folders: list[Path], extra: dict[str, Any]) -> dict[str, Any]:
    files = [
        {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": sha256(p)}
        for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()
    ]
    return {**extra, "created": timestamp(), "files": files}


def verify_saved(folder: Path, expected: dict[str, torch.Tensor], what: str) -> int:
    """Re-read every safetensors file of ``folder``; each tensor must equal the in-memory one."""
    count = 0
    for file in sorted(folder.glob("*.safetensors")):
        for name, tensor in load_file(file).items():
            if name not in expected or not torch.equal(tensor, expected[name].detach().cpu()):
                raise StepError(f"{what}: {file.name} tensor {name} differs from the trained weights after reload")
            count += 1
    if count == 0:
        raise StepError(f"{what}: no weights were written to {folder}")
    return count


def _probe(ctx: RunContext) -> torch.Tensor:
    data = ctx.dataset
    example = (data.validation or data.train)[0]
    return torch.tensor([[*example.prompt_ids, *example.completion_ids][:PROBE_TOKENS]])


def _merged(ctx: RunContext, adapter_dir: Path) -> Any:
    """Merge in place; a k-bit base is reloaded in full precision on the CPU first (merging into 4/8-bit
    is lossy, and a full-precision copy beside the k-bit model could overflow the GPU)."""
    if ctx.quantized:
        full = ctx.spec.model.model_copy(update={"quantization": "none"})
        base = load_model(full, ctx.dtype, "cpu").model
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return ctx.model.merge_and_unload()


@contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A folder to write ``folder`` into, renamed to it when the block completes. An earlier attempt's copy
    is removed first: it is being replaced, and keeping it until the rename would need the disk twice."""
    partial = staging(folder)
    for old in (folder, partial):
        shutil.rmtree(old, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    partial.rename(folder)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def human_bytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.3g} MB"


def run(ctx: RunContext) -> str:
    model, out, layout = ctx.lora_model, ctx.output_dir, ctx.layout
    layout.manifest.unlink(missing_ok=True)  # an earlier attempt's: it would vouch for folders being rewritten
    adapter_dir = layout.adapter
    with staged(adapter_dir) as partial:
        model.save_pretrained(str(partial))
        ctx.tokenizer.save_pretrained(str(partial))
        tensors = verify_saved(partial, get_peft_model_state_dict(model), "adapter")
    parts = [f"adapter ({tensors} tensors, {human_bytes(folder_bytes(adapter_dir))}) in {adapter_dir}"]

    probe = _probe(ctx).to(next(model.parameters()).device)
    model.eval()
    with torch.inference_mode():
        ctx.probe = (probe, model(input_ids=probe).logits.float().cpu())

    folders = [adapter_dir]
    ctx.artifacts = Artifacts(adapter=str(adapter_dir), manifest=str(layout.manifest), report=str(layout.report))
    if ctx.spec.output.merge:
        merged_dir = layout.merged
        merged = _merged(ctx, adapter_dir)
        merged.config.use_cache = True  # training turns the KV cache off; generation wants it
        with staged(merged_dir) as partial:
            merged.save_pretrained(str(partial))
            ctx.tokenizer.save_pretrained(str(partial))
            tensors = verify_saved(partial, merged.state_dict(), "merged model")
        folders.append(merged_dir)
        ctx.artifacts.merged = str(merged_dir)
        parts.append(f"merged model ({tensors} tensors, {human_bytes(folder_bytes(merged_dir))}) in {merged_dir}")
        del merged
    # The reloaded artifact is what gets evaluated from here on: drop every reference to the trained
    # model (merge_and_unload returns the base model object step 0 loaded) so step 6 can free it.
    ctx.model = ctx.loaded = None
    info = {"baseModel": resolve_source(ctx.spec.model).describe(), "fingerprint": ctx.fingerprint}
    listing = manifest(out, folders, info)
    write_atomically(layout.manifest, json.dumps(listing, indent=2))
    parts.append(f"manifest of {len(listing['files'])} files; reload verified")
    return "; ".join(parts + _publish(ctx, listing["files"]))


def _publish(ctx: RunContext, files: list[dict[str, Any]]) -> list[str]:
    """Copy the manifest's files to every destination, verified (``destinations``), and say where the adapter
    is to be loaded from; warn when its rank needs a server's LoRA rank limit raised."""
    artifacts, rank = ctx.artifacts, ctx.spec.lora.rank
    artifacts.destinations = [store.publish(ctx.output_dir, files, ctx.layout.manifest, "adapter")
                              for store in ctx.stores]
    volume = os.environ.get(OUTPUT_URI_ENV)
    artifacts.adapter_uri = (artifacts.destinations[0].adapter_uri if artifacts.destinations
                             else f"{volume.rstrip('/')}/adapter" if volume else None)
    artifacts.lora_rank = rank
    parts = [f"uploaded to {c.uri} and read back: {c.files} files, {human_bytes(c.bytes)}, manifest {c.digest[:19]}"
             for c in artifacts.destinations]
    warning = rank_warning(rank)
    return parts + ([warning] if warning else [])


def rank_warning(rank: int) -> str | None:
    """What a server needs for an adapter above vLLM's default rank limit: the next value its flag takes."""
    if rank <= SERVING_DEFAULT_MAX_LORA_RANK:
        return None
    flag = next(v for v in SERVING_MAX_LORA_RANKS if v >= rank)  # the API caps the rank at 512, the last one
    return (f"rank {rank} is above vLLM's default --max-lora-rank {SERVING_DEFAULT_MAX_LORA_RANK}: serve it with "
            f"--max-lora-rank={flag} (KServe: lora.maxRank: {flag}; docs/serving.md)")

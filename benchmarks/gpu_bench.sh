#!/usr/bin/env bash
# The benchmark on one GPU, sized to finish in under ten minutes: t5-small shapes (60M parameters,
# random weights) in bf16, speed (medians, with model FLOPs utilisation) and then a short quality run.
#
#   benchmarks/gpu_bench.sh wheels     # on a machine with PyPI: fetch what a bare GPU image lacks into .whl/
#   benchmarks/gpu_bench.sh [run]      # on the GPU machine (offline is fine): install .whl/ if present, run
#
# `run` writes speed.txt and quality.txt into $OUT (or a new outputs/gpu-bench-DATE-TIME/). Each part has its own time
# limit, so a slow quality part never costs the speed figures; each speed run prints its figures as it
# ends. The limits are guesses (no GPU run of it yet): ~30 s per speed run with start-up. Knobs (environment):
#   SIZE=t5-small SPEED_STEPS=100 REPEATS=2 BATCH=32 EVAL_BATCH=64 SPEED_LIMIT=360
#   QUALITY_STEPS=500 QUALITY_SEEDS=0 QUALITY_SYSTEMS=baseline,seqtune-trainer,seqtune-loop QUALITY_LIMIT=220
#   BENCH_ARGS="..." (more flags of bench_summarization.py, for both parts), WHEELS=.whl,
#   SITE=/tmp/seqtune-wheels/site-packages (where the carried wheels are installed)
# The full comparison (3 seeds, 2,000 steps) is the README's `make bench` line for GPU machines.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-$REPO/.whl}"
# Where the run installs the carried wheels. The name must hold 'site-packages': dill (datasets' hasher)
# pickles a module found anywhere else by value, and pyarrow's cannot be (Dataset.from_dict then fails).
SITE="${SITE:-/tmp/seqtune-wheels/site-packages}"
# The carried pyarrow (what requirements.txt's install resolves to) and the members of its wheel that
# seqtune never loads (see fetch_wheels).
PYARROW_VERSION=26.0.1
PYARROW_UNUSED=("pyarrow/include/*" "pyarrow/tests/*" "pyarrow/src/*" "pyarrow/*flight*" "pyarrow/*s3*")

fetch_wheels() {
    # Pure-Python packages (and regex, which transformers needs new) at the versions requirements.txt
    # pins, for CPython 3.12 on x86_64; the image already holds torch, accelerate, tokenizers, numpy,
    # pandas, huggingface_hub and the rest. rouge-score ships no wheel, so one is built.
    # Versions: requirements.txt's pins, and for the packages it does not name, those that its pinned
    # install resolves to (the .venv of `make install`).
    local wanted=()
    local name pin
    for name in transformers datasets nltk rouge-score; do
        pin="$(grep -i "^$name==" "$REPO/requirements.txt")"
        [ -n "$pin" ] || { echo "gpu_bench: requirements.txt pins no $name (expected a line '$name==VERSION')" >&2; exit 1; }
        wanted+=("$pin")
    done
    mkdir -p "$WHEELS"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
        "${wanted[@]:0:3}" regex==2026.11.19 fsspec==2026.9.0 dill==0.4.1 multiprocess==0.70.19 defusedxml==0.7.1 \
        "pyarrow==$PYARROW_VERSION" || exit 1
    "$PY" -m pip wheel --quiet --no-deps -w "$WHEELS" "${wanted[3]}" || exit 1
    # pyarrow is for an image whose own is older than datasets needs (the run installs it only then).
    # Whole (55 MB), it and the rest would not fit in the 64 MiB a device call carries; seqtune needs
    # neither its Flight nor its S3 (a third of it), which pyarrow loads only when asked, nor its headers
    # and tests.
    "$PY" "$REPO/benchmarks/gpu_wheels.py" slim "$WHEELS"/pyarrow-"$PYARROW_VERSION"-*.whl "${PYARROW_UNUSED[@]}" || exit 1
    ls -l "$WHEELS"
    du -sh "$WHEELS"
}

run_bench() {
    local out="${OUT:-$REPO/outputs/gpu-bench-$(date +%Y%m%d-%H%M%S)}"  # a new folder: no earlier tables lost
    mkdir -p "$out"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        local carried=() wheel reason
        for wheel in "$WHEELS"/*.whl; do
            [[ "$(basename "$wheel")" == pyarrow-* ]] || carried+=("$wheel")
        done
        # The carried pyarrow (slimmed) only where the image's does not do: an image's own is whole.
        if compgen -G "$WHEELS/pyarrow-*.whl" >/dev/null; then
            reason="$("$PY" "$REPO/benchmarks/gpu_wheels.py" unmet "$WHEELS" pyarrow)"
            case $? in
                0) ;;
                3) echo "gpu_bench: $reason; installing the carried one"; carried+=("$WHEELS"/pyarrow-*.whl) ;;
                *) echo "gpu_bench: could not check $PY's pyarrow against the carried wheels (above)" >&2; exit 1 ;;
            esac
        fi
        if [ "${#carried[@]}" -gt 0 ]; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
                "${carried[@]}" || exit 1
            export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        fi
    fi
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, transformers, datasets, accelerate, pyarrow, rouge_score, seqtune; print('torch', torch.__version__, \
'| transformers', transformers.__version__, '| datasets', datasets.__version__, '| accelerate', accelerate.__version__, \
'| pyarrow', pyarrow.__version__, 'from', pyarrow.__path__[0], '| cuda', torch.cuda.is_available())" || {
        echo "gpu_bench: $PY cannot import a requirement (above). Install requirements.txt there, or on an offline" \
             "GPU image carry wheels: run 'benchmarks/gpu_bench.sh wheels' on a machine with PyPI first." >&2
        exit 1
    }

    local size="${SIZE:-t5-small}"
    local extra=()
    read -ra extra <<< "${BENCH_ARGS:-}"
    local common=(--sizes "$size" --bf16 --batch_size "${BATCH:-32}" --eval_batch_size "${EVAL_BATCH:-64}" "${extra[@]}")
    timeout "${SPEED_LIMIT:-360}" "$PY" "$REPO/benchmarks/bench_summarization.py" "${common[@]}" \
        --steps "${SPEED_STEPS:-100}" --repeats "${REPEATS:-2}" --skip_memory --quality_steps 0 2>&1 | tee "$out/speed.txt"
    local speed=${PIPESTATUS[0]}
    timeout "${QUALITY_LIMIT:-220}" "$PY" "$REPO/benchmarks/bench_summarization.py" "${common[@]}" --repeats 0 \
        --quality_size "$size" --quality_steps "${QUALITY_STEPS:-500}" --quality_seeds "${QUALITY_SEEDS:-0}" \
        --quality_systems "${QUALITY_SYSTEMS:-baseline,seqtune-trainer,seqtune-loop}" 2>&1 | tee "$out/quality.txt"
    local quality=${PIPESTATUS[0]}
    echo "gpu_bench: speed exit $speed, quality exit $quality (124: hit its time limit); outputs in $out"
    [ "$speed" -eq 0 ] && [ "$quality" -eq 0 ]
}

case "${1:-run}" in
    wheels) fetch_wheels ;;
    run) run_bench ;;
    *) echo "usage: benchmarks/gpu_bench.sh [wheels|run]" >&2; exit 2 ;;
esac

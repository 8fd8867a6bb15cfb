#!/usr/bin/env bash
# Every stage in the order the committed model was trained: the data, then the codec in parallel
# with LLM -> encoder/adapter -> state head, then the speech decoder (it needs both), the export
# and the measurements. Each stage is nice'd and single-threaded; logs: training/runs/<stage>.log.
# Stages with a time budget are not bit-reproducible (steps depend on the machine's speed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
mkdir -p training/runs
stage() {
    local name=$1
    shift
    echo "== $name $*"
    nice -n 10 "$PY" -m "training.$name" "$@" >>"training/runs/$name.log" 2>&1
}

stage make_data
stage train_codec --minutes 26 &
codec=$!
stage train_llm --steps 300
stage train_audio --minutes 15
stage train_audio --minutes 5 --resume --lr 6e-4
stage train_state --minutes 8
stage train_state --minutes 4 --resume --history 0.6 --lr 4e-4 --adapter-lr 1e-4
stage train_state --minutes 4 --resume --history 0.5 --lr 3e-4 --adapter-lr 2e-4
wait "$codec"
stage eval_codec
stage train_decoder --minutes 5
stage train_decoder --minutes 1.5 --resume --lr 5e-4
stage export
stage measure
cat training/runs/*/figures.json training/runs/measure.json

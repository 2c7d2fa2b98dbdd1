#!/usr/bin/env bash
# The GPU measurements (issue 11, item 8) in one run, most important first, each step under its own time limit and
# all of them under one deadline, so that a slow or failing step still leaves the others' figures:
#   small: musicgen-small's shape: read bandwidth, transformers' bf16 `generate` (as is, and without cuDNN's
#   attention), ours (bf16, CUDA graphs), the streaming decode;
#   jam: a 30 s jam through the OSC server; gpu-tests: the CUDA-only tests; medium: transformers against ours;
#   streams: 1, 4 and 16 streams at once on the batching engine (its rounds as CUDA graphs; streams-eager: without);
#   profile: where a decode step's time goes.
# Usage: bash benchmarks/gpu.sh OUT_DIR [DEADLINE_S [STEP...]]  (python3 with torch and the project's packages)
# Each step's output goes to OUT_DIR/STEP.log (seven files: with a log of the whole run, the device tool's eight).
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [DEADLINE_S [STEP...]]}
deadline=$(( $(date +%s) + ${2:-480} ))
shift $(( $# < 2 ? $# : 2 ))
wanted=${*:-small jam gpu-tests medium streams streams-eager profile}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu tries the script out on a machine without a GPU

step() {  # step NAME SECONDS COMMAND...: run under min(SECONDS, time to the deadline), log to OUT/NAME.log
    local name=$1 limit=$2 left start rc
    shift 2
    [[ " $wanted " == *" $name "* ]] || return 0
    left=$(( deadline - $(date +%s) ))
    (( left < limit )) && limit=$left
    if (( limit < 20 )); then echo "=== $name skipped: the deadline is near"; return; fi
    echo "=== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    grep -v "^\s*$" "$out/$name.log" | tail -n 60
    echo "=== $name rc=$rc in $(( $(date +%s) - start )) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step small 200 $py -m bridge.bench --device "$device" --shape small --rows bandwidth,hf-bf16,hf-bf16-nocudnn,ours-bf16,decode --steps 500 \
    --cache-dir /tmp/ckpt-small
step jam 120 $py -m bridge.bench --jam --device "$device" --jam-seconds 30 --cache-dir /tmp/ckpt-small
step gpu-tests 90 $py -m pytest -q -p no:cacheprovider -m gpu tests/test_speed_paths.py tests/test_batch_engine.py
step medium 200 $py -m bridge.bench --device "$device" --shape medium --rows hf-bf16,ours-bf16 --steps 500 \
    --cache-dir /tmp/ckpt-medium
step streams 90 $py -m bridge.bench --device "$device" --streams 1,4,16 --steps 200 --rounds 1 --cache-dir /tmp/ckpt-small
step streams-eager 90 $py -m bridge.bench --device "$device" --streams 1,4,16 --steps 200 --rounds 1 \
    --cache-dir /tmp/ckpt-small --step-mode eager
step profile 90 $py benchmarks/gpu_step_profile.py --cache-dir /tmp/ckpt-small

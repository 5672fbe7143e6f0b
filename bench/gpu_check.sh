#!/usr/bin/env bash
# The distillation throughput matrix on a bare GPU machine, in at most 8 minutes.
#
#   bench/gpu_check.sh OUTDIR [BENCH ARGS...]          # GPU: Qwen3-0.6B shapes, seq 2048, bf16
#   bench/gpu_check.sh --tiny OUTDIR [BENCH ARGS...]   # the same matrix, tiny shapes, on CPU
#
# The machine needs python3 with torch and transformers. What else surgery needs to distill and
# the machine lacks comes from the wheels in .whl/ (`make wheels` fills it); surgery itself is
# installed from this checkout with --no-deps. Then bench/distill_throughput.py runs the paths
# eager, compile, step and step-cudagraphs at micro-batch 2, 8 and 16 (cells in that order,
# each path at one micro-batch before the next micro-batch), random weights. It writes to OUTDIR:
#   cells.jsonl   one JSON object per line: the device, a head-loss check, the shapes, then one
#                 per cell (tokens_per_s, peak_gib, mfu, model_tflops, step_ms, host_sync,
#                 profile; or error, e.g. out of memory; or skipped), as each cell ends
#   summary.md    those cells as a table, and the fastest cell's profile
#   log.txt       everything else (pip, warnings, nvidia-smi)
# A failing cell is recorded and the matrix goes on. Cells not started by the time budget are
# recorded as skipped, and the bench is stopped at a hard limit, so the script ends in time.
# BENCH ARGS are appended to the bench's (the last of a repeated option wins), e.g.
# `--paths step --micro-batches 8` for a short rerun.
set -u -o pipefail

tiny=0
if [ "${1:-}" = "--tiny" ]; then tiny=1; shift; fi
out=${1:?usage: bench/gpu_check.sh [--tiny] OUTDIR [BENCH ARGS...]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
log="$out/log.txt"
: >"$log"
started=$(date +%s)

# 1. Missing dependencies from the wheels brought along, and surgery itself, into one folder.
site=${TMPDIR:-/tmp}/surgery-gpu-check-site
rm -rf "$site"
missing=$("$py" - <<'EOF'
import importlib.util
needed = {"lark": "lark", "networkx": "networkx", "yaml": "pyyaml", "rich": "rich",
          "markdown_it": "markdown-it-py", "mdurl": "mdurl", "pygments": "pygments", "safetensors": "safetensors"}
print(" ".join(wheel for module, wheel in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
echo "missing here: ${missing:-nothing}" | tee -a "$log"
if [ -n "$missing" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --find-links .whl --target "$site" \
        $missing >>"$log" 2>&1 || { echo "error: cannot install $missing from .whl/ (run \`make wheels\` first)"; exit 1; }
fi
"$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$site" \
    . >>"$log" 2>&1 || { echo "error: cannot install surgery (see $log)"; exit 1; }
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
(command -v nvidia-smi >/dev/null && nvidia-smi) >>"$log" 2>&1
echo "installed in $(( $(date +%s) - started )) s" | tee -a "$log"

# 2. The matrix. The budget stops starting cells; the hard limit stops a cell that runs long.
common=(--paths eager compile step step-cudagraphs --micro-batches 2 8 16)
if [ "$tiny" = 1 ]; then
    # One thread: tiny matrices gain nothing from more, and a shared CPU loses a lot to spinning.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    args=(--tiny --warmup 2 --steps 3 --budget-s 240)
    limit=300
else
    # Compiling a cell takes up to a minute or two; the timed part is short.
    args=(--warmup 3 --steps 10 --cell-seconds 6 --budget-s 330 --profile 2)
    limit=$(( 450 - ($(date +%s) - started) ))
fi
timeout --signal=INT --kill-after=10 "$limit" "$py" bench/distill_throughput.py "${common[@]}" "${args[@]}" "$@" \
    2>>"$log" | tee "$out/cells.jsonl"
status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo '{"config": "surgery", "error": "stopped at the time limit: the cell running then is lost"}' \
        | tee -a "$out/cells.jsonl"
fi

# 3. The table.
"$py" bench/distill_throughput.py --table "$out/cells.jsonl" | tee "$out/summary.md"
echo "gpu_check: $(( $(date +%s) - started )) s, bench exit status $status; results in $out"

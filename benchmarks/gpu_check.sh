#!/usr/bin/env bash
# Everything GPU-specific in one command (issue 12), within 8 minutes on one H100/H200:
#
#   1. the `-m gpu` tests                                   (FSDP1/FSDP2 on NCCL, bf16, fp16 clipping, host syncs)
#   2. bench_step.py on gpt2-bf16, 1 round                  (loop vs transformers.Trainer vs hf_lightning)
#   3. bench_step.py on gpt2-bf16-compile, 1 round          (the same with torch_compile=True)
#   4. bench_checkpoint.py on gpt2-124m-bf16-cuda, 1 round  (how long a save blocks training, resume)
#
# and ends with ONE table: hf_lightning ÷ transformers.Trainer and ÷ the hand-written loop, against issue 6's targets.
#
# Usage: benchmarks/gpu_check.sh [--out DIR] [--save-results] [--skip tests|eager|compile|checkpoint]...
#   --out DIR         logs, status.tsv and the benchmark payloads (*.json); default: a new folder under $TMPDIR
#   --save-results    also store the payloads under benchmarks/results/ (bench_step.py --markdown then shows them)
#   --skip STEP       leave a step out (repeatable)
#   --cpu-smoke       no GPU needed: the same steps on tiny CPU workloads (the -m gpu tests then skip); checks
#                     this script's plumbing only, its numbers mean nothing
# Time limits per step, in seconds (a step is killed, with every process it started, when its time is up):
#   GPU_CHECK_TESTS_S=185  GPU_CHECK_EAGER_S=60  GPU_CHECK_COMPILE_S=125  GPU_CHECK_CHECKPOINT_S=85
# (455 s in all: with start-up and the summary the whole run stays under 8 minutes even when every step overruns).
# PYTHON (default: python, else python3) is the interpreter; run from anywhere, it works in the repository root.
# The tests step runs the test files that hold `pytest.mark.gpu` tests (so a missing optional package elsewhere
# cannot stop it at collection).
#
# Without CUDA it prints one line and exits 0 at once: having nothing to check is not a failure, so the
# command can be run unconditionally (CI, a session that may or may not have a GPU); the line says so.
# With CUDA the exit status is 0 when every step passed, 1 otherwise (the table is printed either way).

set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python)}

OUT_DIR=""
SAVE_RESULTS=""
SKIP=" "
SMOKE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
        --out=*) OUT_DIR=${1#--out=}; shift ;;
        --save-results) SAVE_RESULTS="--save-results"; shift ;;
        --skip) SKIP="$SKIP${2:?--skip needs a step} "; shift 2 ;;
        --skip=*) SKIP="$SKIP${1#--skip=} "; shift ;;
        --cpu-smoke) SMOKE="--cpu-smoke"; shift ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
for step in $SKIP; do
    case "$step" in tests|eager|compile|checkpoint) ;; *) echo "gpu_check: --skip '$step': use tests, eager, compile or checkpoint" >&2; exit 2 ;; esac
done

CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null) \
    || { echo "gpu_check: '$PYTHON' cannot import torch (set PYTHON to the environment's interpreter)" >&2; exit 2; }
if [ "$CUDA" != 1 ] && [ -z "$SMOKE" ]; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check, skipped (exit 0)."
    exit 0
fi

if [ -z "$OUT_DIR" ]; then
    OUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
fi
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: > "$OUT_DIR/status.tsv"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STARTED=$(date +%s)
FAILED=0

# Every process a step starts carries GPU_CHECK_STEP=<id> in its environment (the tests' torchrun launches run in
# sessions of their own, out of reach of `timeout`); when the step ends, those left over are killed by pid.
kill_leftovers() {
    local marker="GPU_CHECK_STEP=$1" dir pid
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [ "$pid" = "$$" ] && continue
        if { tr '\0' '\n' < "$dir/environ"; } 2>/dev/null | grep -qxF "$marker"; then
            kill -KILL "$pid" 2>/dev/null && echo "    killed left-over process $pid of step $1"
        fi
    done
}

# run_step NAME SECONDS COMMAND...: the command with a time limit, its output in OUT_DIR/NAME.log.
run_step() {
    local name=$1 limit=$2 begin rc outcome
    shift 2
    begin=$(date +%s)
    echo "[$(date +%H:%M:%S)] $name (at most ${limit}s): $*"
    GPU_CHECK_STEP="$name.$$" timeout --signal=KILL "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    kill_leftovers "$name.$$"
    if [ $rc -eq 0 ]; then
        outcome="passed in $(( $(date +%s) - begin ))s"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        outcome="TIMED OUT after ${limit}s"; FAILED=1
    else
        outcome="FAILED (exit $rc) after $(( $(date +%s) - begin ))s"; FAILED=1
    fi
    printf '%s\t%s\n' "$name" "$outcome" >> "$OUT_DIR/status.tsv"
    echo "    $outcome; log: $OUT_DIR/$name.log"
    if [ $rc -ne 0 ]; then
        tail -n 15 "$OUT_DIR/$name.log" | sed 's/^/    | /'
    fi
}

skipped() { case "$SKIP" in *" $1 "*) printf '%s\tskipped\n' "$2" >> "$OUT_DIR/status.tsv"; return 0 ;; esac; return 1; }

if [ -n "$SMOKE" ]; then
    echo "gpu_check: --cpu-smoke: tiny CPU workloads, checking the plumbing only; output in $OUT_DIR"
else
    echo "gpu_check: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__)'); output in $OUT_DIR"
fi

mapfile -t GPU_TEST_FILES < <(grep -l "pytest.mark.gpu" tests/test_*.py)
skipped tests tests || run_step tests "${GPU_CHECK_TESTS_S:-185}" \
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -o timeout=170 --continue-on-collection-errors "${GPU_TEST_FILES[@]}"
skipped eager step-gpt2-bf16 || run_step step-gpt2-bf16 "${GPU_CHECK_EAGER_S:-60}" \
    "$PYTHON" benchmarks/gpu_check.py step gpt2-bf16 --rounds 1 --warmup-steps 10 --timed-steps 40 \
    --json "$OUT_DIR/step-gpt2-bf16.json" $SAVE_RESULTS $SMOKE
skipped compile step-gpt2-bf16-compile || run_step step-gpt2-bf16-compile "${GPU_CHECK_COMPILE_S:-125}" \
    "$PYTHON" benchmarks/gpu_check.py step gpt2-bf16-compile --rounds 1 --warmup-steps 15 --timed-steps 40 \
    --json "$OUT_DIR/step-gpt2-bf16-compile.json" $SAVE_RESULTS $SMOKE
skipped checkpoint checkpoint-gpt2-124m-bf16-cuda || run_step checkpoint-gpt2-124m-bf16-cuda "${GPU_CHECK_CHECKPOINT_S:-85}" \
    "$PYTHON" benchmarks/gpu_check.py checkpoint gpt2-124m-bf16-cuda --rounds 1 \
    --json "$OUT_DIR/checkpoint-gpt2-124m-bf16-cuda.json" $SAVE_RESULTS $SMOKE

echo
echo "gpu_check: $(( $(date +%s) - STARTED ))s in all"
tests_line=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUT_DIR/tests.log" 2>/dev/null | tail -n 1)
while IFS=$'\t' read -r name outcome; do
    if [ "$name" = tests ] && [ -n "$tests_line" ]; then outcome="$outcome; pytest: $tests_line"; fi
    echo "  $name: $outcome"
done < "$OUT_DIR/status.tsv"
echo
"$PYTHON" benchmarks/gpu_check.py summary "$OUT_DIR" || FAILED=1
exit $FAILED

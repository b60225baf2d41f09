#!/usr/bin/env bash
# Build the action runtime images with docker or podman, tagged as the runtimes
# manifest (invoker/runtimes.json) names them.
#
#   runtimes/build.sh                 # CPU image from a public python:3.11 base
#   runtimes/build.sh --local-base    # no registry: debootstrap a Debian base first
#   runtimes/build.sh --gpu           # also the GPU image (torch wheels bring their CUDA libraries)
#   runtimes/build.sh --tag dev       # tag the images :dev instead of :latest (a side build for tests,
#                                     # run with OWGPU_RUNTIME_IMAGE=owgpu/action-python-v3:dev)
#
# The GPU image installs torch and onnxruntime-gpu from runtimes/python-gpu/wheelhouse,
# filled here with `pip download` (the build itself needs no network).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
engine="${CONTAINER_ENGINE:-}"
base=""
local_base=0
gpu=0
tag=latest
while [ $# -gt 0 ]; do
  case "$1" in
    --local-base) local_base=1 ;;
    --gpu) gpu=1 ;;
    --tag) tag="$2"; shift ;;
    --base) base="$2"; shift ;;
    --engine) engine="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman; elif command -v docker >/dev/null; then engine=docker;
  else echo "build.sh: neither podman nor docker is installed" >&2; exit 1; fi
fi
engine_cmd=("$engine")
[ "$engine" = podman ] && engine_cmd+=(--cgroup-manager=cgroupfs --runtime runc)

LOCAL_BASE=localhost/owgpu-base:bookworm
if [ "$local_base" = 1 ]; then
  "$here/debootstrap-image.sh" "$LOCAL_BASE" python3,python3-venv,ca-certificates,passwd
  base="${base:-$LOCAL_BASE}"
fi
build_args=()
[ -n "$base" ] && build_args+=(--build-arg "BASE=$base")

t0=$(date +%s)
"${engine_cmd[@]}" build -q -f "$here/python/Containerfile" -t "owgpu/action-python-v3:$tag" "${build_args[@]}" "$here/python" >/dev/null
echo "build.sh: owgpu/action-python-v3:$tag in $(( $(date +%s) - t0 )) s"

if [ "$gpu" = 1 ]; then
  wheelhouse="$here/python-gpu/wheelhouse"
  mkdir -p "$wheelhouse"
  cp "$here/python-gpu/requirements.txt" "$wheelhouse/requirements.txt"
  python3 -m pip download -q --dest "$wheelhouse" --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -r "$wheelhouse/requirements.txt"
  context="$(mktemp -d)"
  cp -r "$here/python/owruntime" "$here/python-gpu/Containerfile" "$context/"
  cp -r "$wheelhouse" "$context/wheelhouse"
  t0=$(date +%s)
  "${engine_cmd[@]}" build -q -t "owgpu/action-python-v3-gpu:$tag" "${build_args[@]}" "$context" >/dev/null
  rm -rf "$context"
  echo "build.sh: owgpu/action-python-v3-gpu:$tag in $(( $(date +%s) - t0 )) s"
fi

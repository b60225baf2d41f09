#!/usr/bin/env bash
# Build localhost/owgpu-systemd:bookworm: Debian bookworm with systemd as PID 1, python3 and
# python3-venv. It is the "bare-metal host" the Ansible test deploys to (no registry here, so
# the image is made with debootstrap). About 2.5 min; a no-op when the image exists.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../runtimes/debootstrap-image.sh" "${1:-localhost/owgpu-systemd:bookworm}" \
  systemd,systemd-sysv,python3,python3-venv,ca-certificates,passwd '["/lib/systemd/systemd"]'

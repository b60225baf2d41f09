#!/usr/bin/env bash
# Build localhost/owgpu-systemd:bookworm: Debian bookworm with systemd as PID 1, python3 and
# python3-venv. It is the "bare-metal host" the Ansible test deploys to (no registry here, so
# the image is made with debootstrap from the Debian mirror apt already uses). ~2.5 min.
set -euo pipefail
image="${1:-localhost/owgpu-systemd:bookworm}"
engine=(podman --cgroup-manager=cgroupfs --runtime runc)
if "${engine[@]}" image exists "$image"; then exit 0; fi
command -v debootstrap >/dev/null || { echo "build_systemd_image: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
mirror="$(grep -hE '^URIs: *https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | sed 's/^URIs: *//' || true)"
if [ -z "$mirror" ]; then
  mirror="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=systemd,systemd-sysv,python3,python3-venv,ca-certificates,passwd \
  bookworm "$root" "$mirror" >/dev/null
tar -C "$root" -c . | "${engine[@]}" import --change 'CMD ["/lib/systemd/systemd"]' - "$image" >/dev/null
echo "build_systemd_image: $image"

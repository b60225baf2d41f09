#!/usr/bin/env bash
# Make a Debian bookworm image with debootstrap, for machines that reach no container
# registry, from the Debian mirror apt already uses; a no-op when the image exists.
#
#   runtimes/debootstrap-image.sh IMAGE PACKAGES [CMD-JSON]
#   e.g. runtimes/debootstrap-image.sh localhost/owgpu-base:bookworm python3,python3-venv,ca-certificates,passwd
#
# Uses podman (cgroupfs, runc) or docker, like build.sh.
set -euo pipefail
image="$1" packages="$2" cmd="${3:-}"
if command -v podman >/dev/null; then engine=(podman --cgroup-manager=cgroupfs --runtime runc)
elif command -v docker >/dev/null; then engine=(docker)
else echo "debootstrap-image.sh: neither podman nor docker is installed" >&2; exit 1; fi
"${engine[@]}" image inspect "$image" >/dev/null 2>&1 && exit 0
command -v debootstrap >/dev/null || { echo "debootstrap-image.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
# The mirror apt already uses (deb822 .sources first, then sources.list; comments skipped).
mirror="$(grep -hE '^URIs: *https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | sed 's/^URIs: *//' || true)"
if [ -z "$mirror" ]; then
  mirror="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap-image.sh: debootstrap bookworm from $mirror for $image (a minute or two)"
t0=$(date +%s)
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >/dev/null
change=()
[ -n "$cmd" ] && change=(--change "CMD $cmd")
tar -C "$root" -c . | "${engine[@]}" import "${change[@]}" - "$image" >/dev/null
echo "debootstrap-image.sh: $image in $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# For the container tests (tests/containers, run by `make test`): podman, mmdebstrap, and a Debian
# bookworm base image made locally (`container_setup.sh [IMAGE]`, localhost/debian:bookworm by
# default) for machines that reach Debian's mirrors but no image registry. Installs and builds
# only what is missing.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q podman runc mmdebstrap
fi
base="${1:-localhost/debian:bookworm}"
if ! podman image exists "$base"; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$tmp/rootfs.tar"
  podman import "$tmp/rootfs.tar" "$base"
fi

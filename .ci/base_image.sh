#!/usr/bin/env bash
# A local base image for the CPU stack (no image can be pulled here): debootstrap a minimal
# bookworm with Python 3.11, trust the host's CA bundle (the egress proxy's CA), import it.
# Like NVIDIA's tritonserver images it has python3 and pip but no python3-venv, so an image
# step that needs a venv fails here as it would on a GPU host.
set -euo pipefail
name=${1:-doc-triton-base:local}
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name exists"
  exit 0
fi
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | head -n 1)
root=$(mktemp -d)
debootstrap --variant=minbase \
  --include=python3,python3-pip,ca-certificates,libpython3.11,libstdc++6,libgomp1 \
  bookworm "$root" "$mirror" >/dev/null
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$name" >/dev/null
rm -rf "$root"
echo "base image $name imported"

#!/usr/bin/env bash
# Docker engine + Compose v2 on a Debian bookworm CI machine, then start dockerd.
# bookworm's docker.io is engine 20.10; Compose v2 comes from trixie's docker-compose package
# (a static CLI plugin), fetched with a separate sources list so the system's stays untouched.
set -euo pipefail
log=${DOCKERD_LOG:-/tmp/dockerd.log}

mirror() {  # the Debian mirror this machine already uses (no host is hard-coded here)
  sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial"
  echo "deb $(mirror) trixie main" > "$tmp/trixie.list"
  apt_opts=(-o Dir::Etc::SourceList="$tmp/trixie.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$tmp/lists")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$tmp" && apt-get "${apt_opts[@]}" download docker-compose >/dev/null)
  dpkg -x "$tmp"/docker-compose_*.deb "$tmp/extract"
  mkdir -p "$HOME/.docker/cli-plugins"
  cp "$tmp/extract/usr/libexec/docker/cli-plugins/docker-compose" "$HOME/.docker/cli-plugins/"
  rm -rf "$tmp"
fi

if ! docker info >/dev/null 2>&1; then
  nohup dockerd >"$log" 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info --format 'Docker engine {{.ServerVersion}} ({{.Driver}})'
docker compose version

#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install dependencies, build, start
# `hearth server` with its embedded defaults (SQLite + local disk under /var/lib/hearth),
# load a busybox image and bring up a workspace from this repository.
#   scripts/demo.sh [GIT-SOURCE]
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "error: run as root (hearth manages mounts, cgroups and namespaces)" >&2; exit 1; }
scripts/install-deps.sh
scripts/build.sh --release
bin="$PWD/target/release"
export PATH="$bin:$PATH"
data=${HEARTH_DATA_DIR:-/var/lib/hearth}
export HEARTH_DATA_DIR="$data"

if ! hearth ls >/dev/null 2>&1; then
  mkdir -p "$data"
  echo "starting hearth server (log: $data/server.log)"
  nohup "$bin/hearth" server >>"$data/server.log" 2>&1 &
  for _ in $(seq 100); do hearth ls >/dev/null 2>&1 && break; sleep 0.1; done
  hearth ls >/dev/null || { tail -20 "$data/server.log" >&2; exit 1; }
fi

img=$(mktemp --suffix=.tar); trap 'rm -f "$img"' EXIT
scripts/make-image.sh busybox "$img" >/dev/null
hearth image load "$img" --name busybox:latest

source=${1:-$PWD}
name=${HEARTH_DEMO_NAME:-demo}
if hearth ls --json | grep -q "\"name\": *\"$name\""; then
  echo "workspace $name exists; starting it"
  hearth start "$name"
else
  hearth up "$source" --image busybox --name "$name"
fi
echo
hearth exec "$name" -- sh -c 'echo "inside: $(id -un) uid=$(id -u) host map: $(cat /proc/self/uid_map)"; ls /workspace'
hearth ls
echo
echo "get a shell:  PATH=$bin:\$PATH hearth shell $name"

#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install dependencies, build, start
# `hearth server` with its embedded defaults (SQLite + local disk under /var/lib/hearth),
# load a busybox image and bring up a workspace from this repository.
#   scripts/demo.sh [GIT-SOURCE]
# Env: HEARTH_DATA_DIR (default /var/lib/hearth), HEARTH_DEMO_NAME (workspace, default demo),
# HEARTH_SERVER_ARGS (extra `hearth server` flags, e.g. "--listen 127.0.0.1:7071").
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "error: run as root (hearth manages mounts, cgroups and namespaces): sudo $0${*:+ $*}" >&2; exit 1; }
scripts/install-deps.sh
# rustup (run by install-deps.sh on a machine without Rust) installs into ~/.cargo/bin.
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
scripts/build.sh --release
bin="$PWD/target/release"
export PATH="$bin:$PATH"
data=${HEARTH_DATA_DIR:-/var/lib/hearth}
export HEARTH_DATA_DIR="$data"

if ! hearth ls >/dev/null 2>&1; then
  mkdir -p "$data"
  echo "starting hearth server (log: $data/server.log)"
  # shellcheck disable=SC2086 # word splitting of the extra flags is wanted
  nohup "$bin/hearth" server ${HEARTH_SERVER_ARGS:-} >>"$data/server.log" 2>&1 &
  for _ in $(seq 100); do hearth ls >/dev/null 2>&1 && break; sleep 0.1; done
  hearth ls >/dev/null || { tail -20 "$data/server.log" >&2; exit 1; }
fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
scripts/make-image.sh busybox "$tmp/busybox.tar" >/dev/null
hearth image load "$tmp/busybox.tar" --name busybox:latest

source=${1:-}
if [[ -z "$source" ]]; then
  # The clone runs as the workspace's unprivileged uid, which cannot read a checkout under
  # /root: hand it a world-readable bare copy of this repository.
  chmod 755 "$tmp"
  git clone -q --bare "$PWD" "$tmp/hearth.git"
  chmod -R a+rX "$tmp/hearth.git"
  source="$tmp/hearth.git"
fi
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

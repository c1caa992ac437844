#!/usr/bin/env bash
# Builds the hearth binary and the static in-workspace agent next to it.
# Usage: scripts/build.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
flags=()
if [[ "${1:-}" == "--release" ]]; then profile=release; flags=(--release); fi
target=x86_64-unknown-linux-gnu
# The web dashboard (web/, TypeScript): bundled into web/dist, which hearth-server embeds.
# npm ci only when the lockfile changed since the last install.
command -v npm >/dev/null || { echo "error: building the dashboard needs node and npm: run scripts/install-deps.sh" >&2; exit 1; }
if [[ ! -e web/node_modules/.package-lock.json || web/package-lock.json -nt web/node_modules/.package-lock.json ]]; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd web && npm run --silent build)
# The agent runs in any image (busybox, musl, old glibc): link it statically. An explicit
# --target keeps these flags away from build scripts and proc-macros.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q -p hearth-agent --profile agent --target "$target"
cargo build -q -p hearth "${flags[@]}"
install -m 0755 "target/$target/agent/hearth-agent" "target/$profile/hearth-agent"
echo "built target/$profile/hearth and target/$profile/hearth-agent"

#!/usr/bin/env bash
# Builds the hearth binary and the static in-workspace agent next to it.
# Usage: scripts/build.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
flags=()
if [[ "${1:-}" == "--release" ]]; then profile=release; flags=(--release); fi
target=x86_64-unknown-linux-gnu
# The agent runs in any image (busybox, musl, old glibc): link it statically. An explicit
# --target keeps these flags away from build scripts and proc-macros.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q -p hearth-agent --profile agent --target "$target"
cargo build -q -p hearth "${flags[@]}"
install -m 0755 "target/$target/agent/hearth-agent" "target/$profile/hearth-agent"
echo "built target/$profile/hearth and target/$profile/hearth-agent"

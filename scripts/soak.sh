#!/usr/bin/env bash
# Long crash soak (not in CI): SIGKILLs the server at random points of snapshot, stop,
# start and restore, checking every file by checksum after each restart.
#   scripts/soak.sh [ITERATIONS]   (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
export HEARTH_AGENT="$PWD/target/x86_64-unknown-linux-gnu/agent/hearth-agent"
HEARTH_CRASH_ITERATIONS=${1:-500} cargo test -p hearth --test crash snapshot_crash_loop -- --nocapture

#!/usr/bin/env bash
# Runs every test on real containers (root required): builds the static agent, makes the
# busybox, Debian and Debian-with-podman-and-docker test images (the Debian ones are cached
# under /var/cache/hearth-images), then runs the cargo test suite. Tests never skip: each
# fails on a prerequisite it lacks (root, an image below, a device, a tool), so this script
# makes them all and every suite runs; `#[ignore]` is only for what this kind of machine
# cannot do, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "error: tests need root (real mounts, cgroups, namespaces): sudo $0${*:+ $*}" >&2; exit 1; }
scripts/install-deps.sh --test
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
scripts/build.sh
imgs=${HEARTH_TEST_IMAGES:-/var/cache/hearth-images/test}
mkdir -p "$imgs"
scripts/make-image.sh busybox "$imgs/busybox.tar" >/dev/null
scripts/make-image.sh debian "$imgs/debian.tar"
scripts/make-image.sh debian-containers "$imgs/debian-containers.tar"
scripts/make-image.sh builder "$imgs/builder.tar"
export HEARTH_TEST_BUSYBOX="$imgs/busybox.tar" HEARTH_TEST_DEBIAN="$imgs/debian.tar"
export HEARTH_TEST_DEBIAN_CONTAINERS="$imgs/debian-containers.tar" HEARTH_TEST_BUILDER="$imgs/builder.tar"
# Not target/debug/hearth-agent: `cargo test --workspace` rebuilds that one dynamically.
export HEARTH_AGENT="$PWD/target/x86_64-unknown-linux-gnu/agent/hearth-agent"
cargo test --workspace --no-fail-fast -- --test-threads="${HEARTH_TEST_THREADS:-2}"

#!/usr/bin/env bash
# Installs what Hearth needs on a fresh Debian 12 host (run as root): the runtime tools, a C
# toolchain and, when no `cargo` is found, Rust through rustup.
#   scripts/install-deps.sh           what `hearth server` and the build need
#   scripts/install-deps.sh --test    plus what the tests use (registry, skopeo, OpenSSH client,
#                                     PostgreSQL, moto, schemathesis, the devcontainer reference CLI,
#                                     headless Chromium and chromedriver, the oidc-provider
#                                     OpenID provider)
#   scripts/install-deps.sh --bench   plus podman for `hearth bench --podman`, sshd for `--ssh`
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "error: installing packages needs root: sudo $0${*:+ $*}" >&2; exit 1; }
pkgs=(crun runc busybox-static debootstrap iproute2 iptables nftables btrfs-progs git
  ca-certificates curl gcc libc6-dev)
# node and npm build the web dashboard (scripts/build.sh); a newer node (NodeSource) counts.
command -v npm >/dev/null || pkgs+=(nodejs npm)
case "${1:-}" in
  # postgresql: the tests start private servers with its initdb/pg_ctl (db/scratch.rs).
  # chromium, chromium-driver: tests/web.rs drives the dashboard in headless Chromium.
  --test) pkgs+=(docker-registry skopeo apache2-utils python3-venv openssh-client postgresql
    chromium chromium-driver fonts-dejavu-core) ;;
  --bench) pkgs+=(podman skopeo uidmap openssh-server) ;;
  "") ;;
  *) echo "usage: $0 [--test|--bench]" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's own cargo is too old for the dependencies: the current stable one, via rustup.
if ! command -v cargo >/dev/null && [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
  echo "installing Rust (rustup, stable) into $HOME/.cargo"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile default
fi
# S3-compatible server for the snapshot store's tests (PyPI's moto, server mode), in its own
# venv: Debian's python refuses system-wide pip installs.
if [[ "${1:-}" == --test ]] && ! command -v moto_server >/dev/null; then
  venv=/opt/hearth-test-venv
  echo "installing moto[server] (S3-compatible test server) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]'
  ln -sf "$venv/bin/moto_server" /usr/local/bin/moto_server
fi
# OpenAPI contract fuzzer for tests/openapi_contract.rs (PyPI's schemathesis), same venv.
if [[ "${1:-}" == --test ]] && ! command -v schemathesis >/dev/null; then
  venv=/opt/hearth-test-venv
  echo "installing schemathesis into $venv"
  [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis==4.32.5   # its CLI flags are what the test uses
  ln -sf "$venv/bin/schemathesis" /usr/local/bin/schemathesis
fi
# The devcontainer.json reference implementation, the oracle of
# crates/hearth-devcontainer/tests/oracle.rs (npm's @devcontainers/cli). It needs node 20 or
# newer; Debian 12's own nodejs is 18, so install NodeSource's nodejs 20 package first there.
devcontainer_cli=0.89.0
if [[ "${1:-}" == --test ]] && [[ "$(devcontainer --version 2>/dev/null)" != "$devcontainer_cli" ]]; then
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  ((node_major >= 20)) || { echo "error: @devcontainers/cli needs node >= 20 (found ${node_major}): install nodejs 20 (NodeSource) and rerun" >&2; exit 1; }
  echo "installing @devcontainers/cli@$devcontainer_cli (npm)"
  npm install -g -q "@devcontainers/cli@$devcontainer_cli" >/dev/null
fi
# A real OpenID provider for crates/hearth/tests/oidc.rs (npm's oidc-provider, at the
# versions the vendored lockfile pins), installed outside the repository; the test links
# its node_modules beside a copy of the provider script.
oidc_src="$(cd "$(dirname "$0")/.." && pwd)/crates/hearth/tests/data/oidc-provider"
oidc_dir=/opt/hearth-test-oidc
if [[ "${1:-}" == --test ]] && ! cmp -s "$oidc_src/package-lock.json" "$oidc_dir/package-lock.json"; then
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  ((node_major >= 20)) || { echo "error: oidc-provider needs node >= 20 (found ${node_major}): install nodejs 20 (NodeSource) and rerun" >&2; exit 1; }
  echo "installing oidc-provider (npm) into $oidc_dir"
  mkdir -p "$oidc_dir"
  cp "$oidc_src/package.json" "$oidc_src/package-lock.json" "$oidc_dir/"
  (cd "$oidc_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

#!/usr/bin/env bash
# Installs what Hearth and its tests need on a fresh Debian 12 host (run as root).
set -euo pipefail
pkgs=(crun runc busybox-static debootstrap iproute2 iptables nftables btrfs-progs git ca-certificates docker-registry skopeo apache2-utils)
[[ "${1:-}" == "--bench" ]] && pkgs+=(podman skopeo uidmap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# S3-compatible server for the snapshot store's tests (PyPI's moto, server mode).
if ! command -v moto_server >/dev/null; then
  echo "installing moto[server] (S3-compatible test server)"
  python3 -m pip install -q 'moto[server]'
  command -v pyenv >/dev/null && pyenv rehash || true
fi

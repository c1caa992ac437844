#!/usr/bin/env bash
# Makes a docker-archive image tarball (what `docker save` writes) that `hearth image load` takes.
#   scripts/make-image.sh busybox OUT.tar            busybox rootfs from Debian's busybox-static
#   scripts/make-image.sh debian  OUT.tar            Debian 12 minbase via debootstrap (slow: cached)
#   scripts/make-image.sh debian-containers OUT.tar  the same plus podman and docker.io (cached)
#   scripts/make-image.sh builder OUT.tar            debian-containers as hearth-builder:latest,
#                                                    the image of Dockerfile builder workspaces
#   scripts/make-image.sh rootfs DIR NAME OUT.tar    any root filesystem directory
set -euo pipefail

cache=${HEARTH_IMAGE_CACHE:-/var/cache/hearth-images}

archive() { # rootfs name out
  local rootfs=$1 name=$2 out=$3 tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  tar -C "$rootfs" --numeric-owner --xattrs --sort=name -cf "$tmp/layer.tar" .
  local diff cfg
  diff=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  cat >"$tmp/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:$diff"]}}
JSON
  cfg=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]\n' "$cfg" "$name" >"$tmp/manifest.json"
  tar -C "$tmp" -cf "$out.tmp" manifest.json "$cfg.json" layer.tar
  mv "$out.tmp" "$out"
  echo "wrote $out ($name)"
}

busybox_rootfs() { # dir
  local r=$1
  [[ -x /bin/busybox ]] || { echo "error: /bin/busybox missing: apt-get install busybox-static" >&2; exit 1; }
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,root,tmp,home/dev,var,dev,proc,sys,run}
  chmod 1777 "$r/tmp"; chmod 700 "$r/root"
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list-full); do
    [[ "$a" == bin/busybox ]] || ln -sf /bin/busybox "$r/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000:dev:/home/dev:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\ndev:x:1000:\nnogroup:x:65534:\n' >"$r/etc/group"
  chown 1000:1000 "$r/home/dev"
}

extend() { # base.tar dir name out: base.tar (made by `archive`) plus one layer of dir's files
  local base=$1 dir=$2 name=$3 out=$4 tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  tar -C "$tmp" -xf "$base" manifest.json
  local cfg0 layers diff cfg
  cfg0=$(sed -E 's/.*"Config":"([^"]+)".*/\1/' "$tmp/manifest.json")
  layers=$(sed -E 's/.*"Layers":\[([^]]*)\].*/\1/' "$tmp/manifest.json")
  tar -C "$tmp" -xf "$base" "$cfg0"
  tar -C "$dir" --numeric-owner --owner=0 --group=0 --sort=name -cf "$tmp/extra.tar" .
  diff=$(sha256sum "$tmp/extra.tar" | cut -d' ' -f1)
  sed -E "s/(\"diff_ids\":\[[^]]*)\]/\1,\"sha256:$diff\"]/" "$tmp/$cfg0" >"$tmp/config.json"
  cfg=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":[%s,"extra.tar"]}]\n' "$cfg" "$name" "$layers" >"$tmp/manifest.json"
  cp "$base" "$out.tmp"
  tar --delete -f "$out.tmp" manifest.json "$cfg0"
  tar -C "$tmp" -rf "$out.tmp" manifest.json "$cfg.json" extra.tar
  mv "$out.tmp" "$out"
  echo "wrote $out ($name)"
}

debian_cached() { # cache-name image-name include-list: debootstrap once into $cache/NAME.tar
  local name=$1 image=$2 include=$3
  mkdir -p "$cache"
  [[ -f "$cache/$name.tar" ]] && return
  command -v debootstrap >/dev/null || { echo "error: debootstrap missing: apt-get install debootstrap" >&2; exit 1; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "debootstrap bookworm minbase +$include (cached afterwards in $cache)..."
  debootstrap --variant=minbase --include="$include" bookworm "$tmp/rootfs" >"$tmp/log" 2>&1 \
    || { tail -20 "$tmp/log" >&2; exit 1; }
  rm -rf "$tmp/rootfs"/var/cache/apt/archives/*.deb "$tmp/rootfs"/var/lib/apt/lists/*
  archive "$tmp/rootfs" "$image" "$cache/$name.tar"
}

case "${1:-}" in
  busybox)
    out=${2:?usage: make-image.sh busybox OUT.tar}
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    busybox_rootfs "$tmp/rootfs"
    archive "$tmp/rootfs" busybox:latest "$out"
    ;;
  debian)
    out=${2:?usage: make-image.sh debian OUT.tar}
    debian_cached debian-bookworm debian:bookworm git,procps
    cp "$cache/debian-bookworm.tar" "$out"
    ;;
  debian-containers|builder)
    # Container engines for nested containers (README "Containers inside a workspace").
    # debootstrap follows Depends only: the Recommends podman needs without a systemd
    # (netavark, slirp4netns, fuse-overlayfs, catatonit, uidmap) are listed by hand.
    # `builder` is the same image as hearth-builder:latest, what `hearth image build` and
    # devcontainer builds run in (podman build; `hearth server --builder-image`).
    out=${2:?usage: make-image.sh $1 OUT.tar}
    debian_cached debian-containers-bookworm debian-containers:bookworm \
      procps,iproute2,ca-certificates,podman,netavark,aardvark-dns,slirp4netns,fuse-overlayfs,catatonit,uidmap,iptables,docker.io,containerd,runc,tini
    # Hearth-specific settings on top, in a layer of their own so that changing them does
    # not redo the debootstrap.
    here=$(cd "$(dirname "$0")" && pwd)
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    install -D -m 0644 "$here/nested/containers.conf" "$tmp/files/etc/containers/containers.conf"
    if [[ $1 == builder ]]; then
      install -D -m 0644 "$here/nested/builder-registries.conf" "$tmp/files/etc/containers/registries.conf.d/50-hearth-builder.conf"
      name=hearth-builder:latest
    else
      install -D -m 0755 "$here/nested/hearth-dockerd" "$tmp/files/usr/local/bin/hearth-dockerd"
      name=debian-containers:bookworm
    fi
    extend "$cache/debian-containers-bookworm.tar" "$tmp/files" "$name" "$out"
    ;;
  rootfs)
    archive "${2:?dir}" "${3:?name}" "${4:?out}"
    ;;
  *)
    echo "usage: make-image.sh busybox|debian|debian-containers|builder OUT.tar | rootfs DIR NAME OUT.tar" >&2; exit 2;;
esac

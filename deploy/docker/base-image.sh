#!/usr/bin/env bash
# Builds the image's base, Debian bookworm (minbase), from Debian's own archive, for machines
# that reach Debian's packages but no container image registry. Elsewhere the Dockerfile's
# default base, debian:bookworm-slim from the public registry, is the same system.
#   deploy/docker/base-image.sh [TAG]      (root: debootstrap needs it)
set -euo pipefail
tag="${1:-elbo-serve-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already exists"
    exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
# ca-certificates so pip reaches PyPI over TLS from inside the build.
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror"
# The same trimming debian:bookworm-slim does: no apt lists, caches or docs in the layer.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
echo "deb $mirror bookworm main" > "$root"/etc/apt/sources.list
tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$tag"
docker image ls "$tag"

#!/usr/bin/env bash
# Build the ztunnel-py image with buildah, without a container registry (run as root):
#   scripts/build-image.sh [--tag TAG] [--base IMAGE | --fresh-base]
#
# Without --base, the base image is Debian 12 built from Debian's archive (debootstrap, minbase
# variant, slimmed as Debian's -slim images are: no documentation, manual pages or locales) and
# kept as a local image named after a hash of this recipe, so a second build reuses it
# (--fresh-base builds it again from the archive all the same). Then the
# Dockerfile is built on it with `buildah bud --isolation chroot` (no container runtime needed:
# RUN steps run in a chroot). Before that, the capture programs are compiled here into their
# bytecode bundle (needs python3 with bcc, python3-bpfcc, and the running kernel's headers, as
# scripts/install.sh sets up), which the image ships instead of bcc. Prints the image's size and
# the build times; the last line is `image TAG ID SIZE_BYTES`.
#
# With a registry, `ztunnel-py bpf bundle -o ztunnel_py/redirect/bpf/redirect.bundle.json`, then
# `docker build -t ztunnel-py .` (BASE_IMAGE defaults to debian:12-slim) builds the same image.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="localhost/ztunnel-py:dev"
base=""
fresh_base=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --base) base="$2"; shift 2 ;;
        --fresh-base) fresh_base=1; shift ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '\033[1m[build-image]\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "build-image.sh must run as root (debootstrap and buildah's chroot isolation need it)" >&2
    exit 1
fi
need=()
command -v buildah >/dev/null || need+=(buildah)
[ -n "$base" ] || command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

# The base recipe. Its text (with the mirrors) names the cached image: change it and the base is
# built again.
make_rootfs() {
    local root="$1"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >&2
    # As Debian's -slim images: dpkg leaves documentation, manual pages and locales out.
    cat > "$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -f "$root/etc/apt/sources.list"
    cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite ${suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: ${suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # No recommended packages, and no cache of downloaded packages, in any image built on it.
    printf 'APT::Install-Recommends "false";\n' > "$root/etc/apt/apt.conf.d/90slim"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    rm -rf "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
    : > "$root/etc/machine-id"
}

started=$(date +%s)
if [ -z "$base" ]; then
    recipe_hash="$(
        { declare -f make_rootfs; echo "$suite $mirror $security"; } | sha256sum | cut -c1-12
    )"
    base="localhost/ztunnel-py-base:${suite}-${recipe_hash}"
    if [ "$fresh_base" = 1 ] && buildah inspect --type image "$base" >/dev/null 2>&1; then
        log "--fresh-base: removing the cached $base"
        buildah rmi -f "$base" >/dev/null
    fi
    if buildah inspect --type image "$base" >/dev/null 2>&1; then
        log "base image $base exists (built from this recipe before): reusing it"
    else
        log "building base image $base from $mirror ($suite, debootstrap minbase)"
        work="$(mktemp -d /var/tmp/ztunnel-py-base.XXXXXX)"
        ctr=""
        cleanup() {
            [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
            rm -rf "$work"
        }
        trap cleanup EXIT
        make_rootfs "$work/rootfs"
        ctr="$(buildah from scratch)"
        mnt="$(buildah mount "$ctr")"
        tar -C "$work/rootfs" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xf -
        buildah umount "$ctr" >/dev/null
        buildah config --cmd /bin/bash \
            --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --label "org.opencontainers.image.description=Debian $suite (debootstrap minbase, slim)" \
            "$ctr"
        buildah commit --quiet "$ctr" "$base" >/dev/null
        cleanup
        trap - EXIT
    fi
fi
base_done=$(date +%s)
# The capture programs' bytecode bundle, compiled here with bcc (this machine has it and the
# kernel headers; the image has neither) into the package directory the Dockerfile copies, and
# removed from the checkout again after the build.
# Debian's python3 by default: python3-bpfcc installs bcc for it (BUNDLE_PYTHON overrides).
bundle="$repo/ztunnel_py/redirect/bpf/redirect.bundle.json"
python="${BUNDLE_PYTHON:-/usr/bin/python3}"
"$python" -c 'import bcc' 2>/dev/null || {
    echo "build-image.sh: compiling the capture programs needs bcc in $python (python3-bpfcc)" >&2
    exit 1
}
trap 'rm -f "$bundle"' EXIT
if ! report="$(cd "$repo" && "$python" -m ztunnel_py.redirect.compile --out "$bundle")"; then
    echo "build-image.sh: cannot compile the capture programs: $report" >&2
    exit 1
fi
bundle_done=$(date +%s)
log "capture programs compiled into their bundle in $((bundle_done - base_done)) s: $report"
log "base ready in $((base_done - started)) s; building $tag on $base"
# pip inside the build trusts what pip trusts here (a TLS-inspecting proxy's CA, say).
pip_ca="${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}"
[ -s "$pip_ca" ] || pip_ca=/etc/ssl/certs/ca-certificates.crt
buildah bud --isolation chroot --pull-never --layers=false --quiet --format docker \
    --secret "id=pip-ca,src=$pip_ca" \
    --build-arg "BASE_IMAGE=$base" -t "$tag" -f "$repo/Dockerfile" "$repo" >/dev/null
done_at=$(date +%s)
id="$(buildah inspect --type image --format '{{.FromImageID}}' "$tag")"
# The unpacked size: what a node stores (registries report the compressed layers instead).
probe="$(buildah from --pull-never "$tag")"
bytes="$(du -sb "$(buildah mount "$probe")" | cut -f1)"
buildah umount "$probe" >/dev/null
buildah rm "$probe" >/dev/null
log "image $tag built in $((done_at - bundle_done)) s (base $((base_done - started)) s): $((bytes / 1000000)) MB"
echo "image $tag ${id:0:12} $bytes"

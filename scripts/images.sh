#!/usr/bin/env bash
# Container images of the suite, built without pulling anything from a
# registry: the host's Go builds a static binary (CGO_ENABLED=0, -trimpath,
# version from git stamped with -ldflags) and buildah assembles it `FROM
# scratch` with the host's CA certificates and a non-root numeric user. The
# configuration (entrypoint, user, working directory /tmp, HEALTHCHECK,
# labels) matches deploy/docker/Dockerfile's final stage.
# deploy/docker/Dockerfile runs the same `rootfs` step inside golang's image,
# so both paths produce the same file tree.
#
#   scripts/images.sh names                 <service> <image> for every image
#   scripts/images.sh build [service...]    build images (all by default): buildah, else docker
#   scripts/images.sh rootfs <service> <dir>  lay out one image's files in dir
#
# Environment: IMAGE_REPO, IMAGE_TAG (defaults in deploy/docker/images.env),
# VERSION (default: git describe), REVISION (default: git rev-parse HEAD),
# IMAGE_SOURCE (the org.opencontainers.image.source label), IMAGE_MAX_MB
# (default 25: a build fails when an image's compressed size is larger),
# CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt), GOARCH,
# IMAGE_BUILDER (buildah or docker; default buildah when installed, else
# docker: images then land in Docker's image store, for `docker compose`).
set -euo pipefail
cd "$(dirname "$0")/.."
# podman's and buildah's configuration for this sandbox and CI (see the file).
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"

# Defaults from deploy/docker/images.env; the environment overrides them.
image_default() { sed -n "s/^$1=//p" deploy/docker/images.env; }
IMAGE_REPO="${IMAGE_REPO:-$(image_default IMAGE_REPO)}"
IMAGE_TAG="${IMAGE_TAG:-$(image_default IMAGE_TAG)}"
IMAGE_SOURCE="${IMAGE_SOURCE:-https://github.com/biobridge/bridge}"
IMAGE_MAX_MB="${IMAGE_MAX_MB:-25}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
# The unprivileged user every image runs as (distroless' "nonroot"), numeric
# so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
IMAGE_UID=65532
VERSION_SYMBOL=github.com/biobridge/bridge/pkg/buildinfo.version

version() {
  if [ -n "${VERSION:-}" ]; then echo "$VERSION"; return; fi
  git describe --tags --always --dirty 2>/dev/null || echo dev
}
revision() {
  if [ -n "${REVISION:-}" ]; then echo "$REVISION"; return; fi
  git rev-parse HEAD 2>/dev/null || echo unknown
}

# One image per services/<svc>/cmd/<svc>: the five services and devstack
# (benchmarks and other tools live in differently named cmd directories).
services() {
  local d svc
  for d in services/*/cmd/*/; do
    svc="$(basename "$d")"
    [ "$svc" = "$(basename "$(dirname "$(dirname "$d")")")" ] && echo "$svc"
  done
}

image_name() { echo "$IMAGE_REPO/$1:$IMAGE_TAG"; }

check_service() {
  local all
  all="$(services)"
  grep -qx -- "$1" <<<"$all" || { echo "unknown service $1 (one of: $(services | tr '\n' ' '))" >&2; exit 2; }
}

# rootfs lays out the whole image: /service, CA certificates, passwd and
# group naming the non-root user, and a world-writable sticky /tmp (the only
# place a service may write; the root file system is mounted read-only).
rootfs() {
  local svc="$1" dir="$2"
  check_service "$svc"
  [ -r "$CA_BUNDLE" ] || { echo "no CA bundle at $CA_BUNDLE (Debian: apt-get install ca-certificates)" >&2; exit 1; }
  rm -rf "$dir"
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp"
  CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X $VERSION_SYMBOL=$(version)" \
    -o "$dir/service" "./services/$svc/cmd/$svc"
  cp "$CA_BUNDLE" "$dir/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$IMAGE_UID" "$IMAGE_UID" > "$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%d:\n' "$IMAGE_UID" > "$dir/etc/group"
  chmod 0644 "$dir/etc/ssl/certs/ca-certificates.crt" "$dir/etc/passwd" "$dir/etc/group"
  chmod 1777 "$dir/tmp"
}

# compressed_bytes is what a registry stores and a node pulls: the image
# pushed to an OCI layout with gzip-compressed layers.
compressed_bytes() {
  local img="$1" dir
  dir="$(mktemp -d)"
  buildah push --quiet --compression-format gzip "$img" "oci:$dir/oci" >/dev/null
  du -sb --apparent-size "$dir/oci/blobs" | cut -f1
  rm -rf "$dir"
}

build_buildah() {
  local work svc img ctr created version revision
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  version="$(version)"
  revision="$(revision)"
  # Docker format: OCI image configs have no HEALTHCHECK.
  export BUILDAH_FORMAT=docker
  # The commit time, not the build time, so the same commit builds the same image.
  created="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
  local limit=$((IMAGE_MAX_MB * 1000 * 1000)) failed=0
  printf '%-40s %12s %12s\n' image uncompressed compressed > "$work/sizes"
  for svc in "$@"; do
    img="$(image_name "$svc")"
    echo "==> $img ($version)"
    rootfs "$svc" "$work/$svc"
    # Every file dated at the commit too: the same commit gives the same
    # layer, byte for byte (the Docker-format config still records buildah's
    # random container id, so image IDs differ).
    find "$work/$svc" -exec touch -h -d "@$created" {} +
    ctr="$(buildah from --quiet scratch)"
    buildah add --quiet --chown 0:0 "$ctr" "$work/$svc/" / >/dev/null
    buildah config \
      --os linux --arch "$(go env GOARCH)" \
      --user "$IMAGE_UID:$IMAGE_UID" \
      --workingdir /tmp \
      --entrypoint '["/service"]' --cmd '' \
      --port 8080/tcp --port 9101/tcp --port 9102/tcp --port 9103/tcp --port 9104/tcp \
      --port 9200/tcp --port 9201/tcp --port 9202/tcp --port 9203/tcp --port 9204/tcp \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
      --healthcheck 'CMD /service healthcheck' \
      --healthcheck-interval 10s --healthcheck-timeout 5s \
      --healthcheck-start-period 20s --healthcheck-retries 3 \
      --label "org.opencontainers.image.title=biobridge-$svc" \
      --label "org.opencontainers.image.description=Biometric Bridge $svc" \
      --label "org.opencontainers.image.source=$IMAGE_SOURCE" \
      --label "org.opencontainers.image.revision=$revision" \
      --label "org.opencontainers.image.version=$version" \
      --label "org.opencontainers.image.created=$(date -u -d "@$created" +%Y-%m-%dT%H:%M:%SZ)" \
      "$ctr"
    local previous
    previous="$(buildah images --quiet --no-trunc "$img" 2>/dev/null || true)"
    buildah commit --quiet --rm --format docker --timestamp "$created" "$ctr" "$img" >/dev/null
    # The image this build replaced, now untagged: remove it unless a
    # container still uses it, so rebuilds do not pile up.
    if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$img")" ]; then
      buildah rmi "$previous" >/dev/null 2>&1 || true
    fi
    local size compressed
    size="$(du -sb --apparent-size "$work/$svc" | cut -f1)"
    compressed="$(compressed_bytes "$img")"
    awk -v i="$img" -v u="$size" -v c="$compressed" 'BEGIN { printf "%-40s %9.1f MB %9.1f MB\n", i, u / 1e6, c / 1e6 }' >> "$work/sizes"
    if [ "$compressed" -gt "$limit" ]; then
      echo "$img: $compressed bytes compressed, more than IMAGE_MAX_MB=$IMAGE_MAX_MB MB" >&2
      failed=1
    fi
  done
  echo
  cat "$work/sizes"
  return "$failed"
}

build_docker() {
  local svc
  for svc in "$@"; do
    docker build -f deploy/docker/Dockerfile \
      --build-arg SERVICE="$svc" --build-arg VERSION="$(version)" --build-arg REVISION="$(revision)" \
      --build-arg SOURCE="$IMAGE_SOURCE" \
      -t "$(image_name "$svc")" .
  done
}

cmd="${1:-}"
shift || true
case "$cmd" in
  names)
    for svc in $(services); do echo "$svc $(image_name "$svc")"; done
    ;;
  rootfs)
    [ $# -eq 2 ] || { echo "usage: $0 rootfs <service> <dir>" >&2; exit 2; }
    rootfs "$1" "$2"
    ;;
  build)
    if [ $# -eq 0 ]; then set -- $(services); fi
    for svc in "$@"; do check_service "$svc"; done
    builder="${IMAGE_BUILDER:-}"
    if [ -z "$builder" ]; then
      if command -v buildah >/dev/null 2>&1; then builder=buildah
      elif command -v docker >/dev/null 2>&1; then builder=docker
      else echo "neither buildah nor docker found (Debian: apt-get install buildah)" >&2; exit 1
      fi
    fi
    case "$builder" in
      buildah) build_buildah "$@" ;;
      docker) echo "building with docker and deploy/docker/Dockerfile"; build_docker "$@" ;;
      *) echo "IMAGE_BUILDER must be buildah or docker, not $builder" >&2; exit 2 ;;
    esac
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

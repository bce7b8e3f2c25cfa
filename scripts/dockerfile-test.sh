#!/usr/bin/env bash
# Builds services with deploy/docker/Dockerfile (buildah's Dockerfile
# builder stands in for Docker) and with `make images`' path
# (scripts/images.sh), and requires the same image from both: the same files
# (path, mode, owner, size, content) and the same configuration (user,
# entrypoint, working directory, environment, HEALTHCHECK, ports, labels).
#
# No registry is reachable here, so the Dockerfile's build stage runs on a
# stand-in for golang:<version>-bookworm made from this machine: its Go
# (/usr/local/go), busybox-static and bash-static. Modules come from the
# host's module cache (GOPROXY=file://…, read-only) and compiled packages from
# the host's build cache (-trimpath builds do not depend on the source
# directory), so after `make images` this takes seconds.
#
#   scripts/dockerfile-test.sh [service...]      (default: every image)
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"

if [ $# -eq 0 ]; then set -- $(scripts/images.sh names | cut -d' ' -f1); fi
go_version="$(go env GOVERSION)"
go_version="${go_version#go}"
standin="localhost/biobridge-test/go-standin:$go_version"
repo=localhost/biobridge-dockerfile-test
fail() { echo "FAIL: $*" >&2; exit 1; }

for f in /bin/busybox /bin/bash-static; do
  [ -x "$f" ] || fail "$f missing (Debian: apt-get install busybox-static bash-static)"
done
[ "$(go env GOROOT)" = /usr/local/go ] || fail "the stand-in copies Go from /usr/local/go, the golang image's GOROOT; this Go is at $(go env GOROOT)"
modcache="$(go env GOMODCACHE)/cache/download"
[ -d "$modcache" ] || fail "no module cache at $modcache (run make images first)"

cleanup() {
  for svc in "$@"; do podman rmi -f "$repo/$svc:dockerfile" "$repo/$svc:script" >/dev/null 2>&1 || true; done
  [ -n "${KEEP_STANDIN:-}" ] || podman rmi -f "$standin" >/dev/null 2>&1 || true
  rm -f "${log:-}"
}
trap 'cleanup "$@"' EXIT

if ! podman image exists "$standin"; then
  echo "--> stand-in for golang:$go_version-bookworm: this machine's Go, busybox and bash"
  ctr="$(buildah from --quiet scratch)"
  mnt="$(buildah mount "$ctr")"
  mkdir -p "$mnt/bin" "$mnt/usr/bin" "$mnt/usr/local" "$mnt/etc/ssl/certs" "$mnt/tmp" "$mnt/root" "$mnt/go"
  cp -a /usr/local/go "$mnt/usr/local/go"
  cp /bin/busybox "$mnt/bin/busybox"
  for applet in $(/bin/busybox --list); do [ -e "$mnt/bin/$applet" ] || ln -s busybox "$mnt/bin/$applet"; done
  cp /bin/bash-static "$mnt/bin/bash"
  ln -sf /bin/env "$mnt/usr/bin/env"
  cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/"
  chmod 1777 "$mnt/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$mnt/etc/passwd"
  buildah unmount "$ctr" >/dev/null
  # As golang's image: GOPATH=/go, HOME=/root, Go on PATH. Test-only: the
  # module proxy and the build cache are the host's, mounted by the build.
  buildah config --env PATH=/usr/local/go/bin:/go/bin:/usr/bin:/bin --env GOPATH=/go --env HOME=/root \
    --env GOPROXY=file:///goproxy --env GOSUMDB=off --env GOCACHE=/gocache "$ctr"
  buildah commit --quiet --rm "$ctr" "$standin" >/dev/null
fi

version="dockerfile-test"
revision="$(git rev-parse HEAD)"
log="$(mktemp)"

# files: path, mode, owner, size and content hash (not mtimes: make images
# dates files at the commit, a Dockerfile build at build time).
tree() {
  local mnt
  mnt="$(podman image mount "$1")"
  (cd "$mnt" && find . -printf '%p %M %U:%G %s %l\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum)
  podman image unmount "$1" >/dev/null
}
config() {
  podman image inspect --format '{{json .Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Config.WorkingDir}} {{json .Config.Env}} {{json .Config.ExposedPorts}} {{json .HealthCheck}} {{index .Labels "org.opencontainers.image.source"}} {{index .Labels "org.opencontainers.image.revision"}} {{index .Labels "org.opencontainers.image.version"}} {{index .Labels "org.opencontainers.image.title"}} {{index .Labels "org.opencontainers.image.description"}}' "$1"
}

for svc in "$@"; do
  echo "--> $svc with deploy/docker/Dockerfile"
  buildah bud --quiet --pull-never --format docker --layers=false \
    -f deploy/docker/Dockerfile --ignorefile deploy/docker/Dockerfile.dockerignore \
    --build-arg GO_IMAGE="$standin" --build-arg SERVICE="$svc" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --volume "$modcache:/goproxy:ro" --volume "$(go env GOCACHE):/gocache" \
    -t "$repo/$svc:dockerfile" . >"$log" 2>&1 || { cat "$log" >&2; fail "$svc: the Dockerfile build failed"; }
  echo "--> $svc with scripts/images.sh (make images)"
  IMAGE_BUILDER=buildah IMAGE_REPO="$repo" IMAGE_TAG=script VERSION="$version" REVISION="$revision" \
    scripts/images.sh build "$svc" >/dev/null
  diff -u <(tree "$repo/$svc:dockerfile") <(tree "$repo/$svc:script") || fail "$svc: the two builds give different files"
  diff -u <(config "$repo/$svc:dockerfile") <(config "$repo/$svc:script") || fail "$svc: the two builds give different configurations"
  echo "$svc: the same files and configuration; $(tree "$repo/$svc:script" | grep ' ./service$')"
done
echo "dockerfile-test: deploy/docker/Dockerfile and make images build the same images ($*)"

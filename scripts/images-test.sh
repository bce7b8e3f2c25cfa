#!/usr/bin/env bash
# Runs the images `make images` built, with podman, against this machine's
# PostgreSQL and Redis, and proves what the deployment files promise:
#
#   1. the devstack image, as a whole, becomes ready and answers its
#      `healthcheck`; its embedded Kafka-protocol broker is also the Kafka of
#      step 2 (no Kafka image can be pulled where this runs);
#   2. every service image (gateway, ingest, tokenbroker, persistence,
#      publisher) starts as its own container, every /readyz answers 200 and
#      every image's `healthcheck` subcommand passes;
#   3. every container runs as the image's non-root user, on a read-only root
#      file system (a write attempt fails with EROFS), without capabilities
#      and without privilege escalation: from `podman inspect` and from
#      inside the running container;
#   4. each image carries the OCI labels and `<image> version` prints the
#      version its label names;
#   5. one HealthKit push through the gateway container comes back from
#      GetLatest on the persistence container (and the publisher container
#      publishes it to Kafka); the same round trip through the devstack;
#   6. SIGTERM stops every container with exit code 0.
#
# Containers share the host's network, so every address is on loopback in
# one block of 100 ports: IMAGES_TEST_PORT_BASE (default 24000, so
# 24000-24099). They use a database and a Redis db of their own, dropped and
# flushed at start: IMAGES_TEST_DB (default biobridge_ci_images, and
# <IMAGES_TEST_DB>_devstack) and IMAGES_TEST_REDIS_DB (default 9). A static
# busybox (BUSYBOX, default /bin/busybox; Debian's busybox-static) is mounted
# read-only at /probe in each container, because the images have no shell.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE="${IMAGES_TEST_PORT_BASE:-24000}"
DB="${IMAGES_TEST_DB:-biobridge_ci_images}"
REDIS_DB="${IMAGES_TEST_REDIS_DB:-9}"
PG_ADMIN_URL="${IMAGES_TEST_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_BASE="${PG_ADMIN_URL%/*}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
NAME="${IMAGES_TEST_NAME:-biobridge-images-test}"
SERVICES=(persistence tokenbroker ingest publisher gateway)
UID_WANT=65532
# podman's configuration for this sandbox and CI (see the file).
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"

image() { scripts/images.sh names | awk -v s="$1" '$1 == s { print $2 }'; }
port() { echo $((BASE + $1)); }
step() { printf '\n--> %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

for tool in podman psql redis-cli curl go; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done
# ldd fails on a static binary; a dynamic one cannot run in a scratch image.
{ [ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1; } || fail "no static busybox at $BUSYBOX (Debian: apt-get install busybox-static)"
for svc in devstack "${SERVICES[@]}"; do
  podman image exists "$(image "$svc")" || fail "image $(image "$svc") not built: run make images"
done

work="$(mktemp -d)"
started=()
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    for c in "${started[@]}"; do
      echo "=== logs of $c (last 30 lines)" >&2
      podman logs --tail 30 "$c" >&2 2>&1 || true
    done
  fi
  for c in "${started[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# Addresses: services at BASE+0..4 (gateway HTTP, ingest, tokenbroker,
# persistence, publisher gRPC) and BASE+10..14 (admin); the devstack 50 above.
addr_env() {
  local off="$1"
  echo "GATEWAY_HTTP_ADDR=127.0.0.1:$(port $((off + 0)))"
  echo "GATEWAY_ADMIN_ADDR=127.0.0.1:$(port $((off + 10)))"
  echo "INGEST_GRPC_ADDR=127.0.0.1:$(port $((off + 1)))"
  echo "INGEST_ADMIN_ADDR=127.0.0.1:$(port $((off + 11)))"
  echo "TOKENBROKER_GRPC_ADDR=127.0.0.1:$(port $((off + 2)))"
  echo "TOKENBROKER_ADMIN_ADDR=127.0.0.1:$(port $((off + 12)))"
  echo "PERSISTENCE_GRPC_ADDR=127.0.0.1:$(port $((off + 3)))"
  echo "PERSISTENCE_ADMIN_ADDR=127.0.0.1:$(port $((off + 13)))"
  echo "PUBLISHER_GRPC_ADDR=127.0.0.1:$(port $((off + 4)))"
  echo "PUBLISHER_ADMIN_ADDR=127.0.0.1:$(port $((off + 14)))"
  echo "INGEST_TARGET=127.0.0.1:$(port $((off + 1)))"
  echo "TOKENBROKER_TARGET=127.0.0.1:$(port $((off + 2)))"
  echo "PERSISTENCE_TARGET=127.0.0.1:$(port $((off + 3)))"
  echo "PUBLISHER_TARGET=127.0.0.1:$(port $((off + 4)))"
}
admin_port() {
  case "$1" in
    gateway) port $(($2 + 10)) ;; ingest) port $(($2 + 11)) ;; tokenbroker) port $(($2 + 12)) ;;
    persistence) port $(($2 + 13)) ;; publisher) port $(($2 + 14)) ;;
  esac
}
KAFKA_ADDR="127.0.0.1:$(port 71)"

# run_container <name> <image> <env file> [args...]: detached, with the
# restrictions production uses (deploy/compose, deploy/kubernetes).
run_container() {
  local name="$1" img="$2" envfile="$3"
  shift 3
  podman run --detach --name "$name" --replace --pull never \
    --network host --ulimit host \
    --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,nosuid,nodev,size=256m,mode=1777 \
    --cap-drop all --security-opt no-new-privileges \
    --volume "$BUSYBOX:/probe/busybox:ro" \
    --env-file "$envfile" "$img" "$@" \
    > /dev/null 2> >(grep -v 'unable to get systemd connection' >&2)
  started+=("$name")
}

wait_ready() { # <url> <container>
  local url="$1" c="$2"
  for _ in $(seq 1 180); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    [ "$(podman inspect --format '{{.State.Running}}' "$c")" = true ] || fail "$c exited before $url answered"
    sleep 0.5
  done
  curl -sS --max-time 2 "$url" >&2 || true
  fail "$url not ready after 90 s"
}

step "fresh database and Redis db ($DB, ${DB}_devstack, redis db $REDIS_DB); ports $BASE-$((BASE + 99))"
psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" \
  -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS ${DB}_devstack WITH (FORCE)" \
  -c "CREATE DATABASE $DB"
redis-cli -h 127.0.0.1 -p 6379 -n "$REDIS_DB" flushdb >/dev/null
go build -o "$work/roundtrip" ./services/devstack/cmd/roundtrip

# Secrets made for this run only.
PSEUDONYM_KEY="$(rand_hex 16)"
USER_TOKEN_SECRET="$(rand_hex 32)"
TOKEN_KEYS="k1:$(head -c 32 /dev/urandom | base64)"
declare -A TOKEN
for who in gateway ingest tokenbroker persistence publisher agents operator; do TOKEN[$who]="$(rand_hex 16)"; done

step "devstack image: the whole suite in one container"
{
  addr_env 50
  echo "EMULATOR_ADDR=127.0.0.1:$(port 70)"
  echo "KAFKA_ADDR=$KAFKA_ADDR"
  echo "POSTGRES_URL=$PG_BASE/${DB}_devstack?sslmode=disable"
  echo "REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB"
  echo "REDIS_KEY_PREFIX=devstack:"
  echo "LOG_PSEUDONYM_KEY=$PSEUDONYM_KEY"
} > "$work/devstack.env"
run_container "$NAME-devstack" "$(image devstack)" "$work/devstack.env"
for svc in "${SERVICES[@]}"; do
  wait_ready "http://127.0.0.1:$(admin_port "$svc" 50)/readyz" "$NAME-devstack"
done
echo "every service of the devstack container is ready"

step "service images: one container each"
common_env() {
  addr_env 0
  echo "POSTGRES_URL=$PG_BASE/$DB?sslmode=disable"
  echo "REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB"
  echo "REDIS_KEY_PREFIX=services:"
  echo "LOG_PSEUDONYM_KEY=$PSEUDONYM_KEY"
  echo "LOG_FORMAT=json"
  echo "OTEL_SERVICE_NAME=$1"
}
# SERVICE_TOKENS and SERVICE_ACL as deploy/compose sets them: each server
# accepts only its own callers, each caller only its methods.
for svc in "${SERVICES[@]}"; do
  {
    common_env "$svc"
    echo "SERVICE_TOKEN=${TOKEN[$svc]}"
    case "$svc" in
      persistence)
        echo "SERVICE_TOKENS=ingest:${TOKEN[ingest]},publisher:${TOKEN[publisher]},tokenbroker:${TOKEN[tokenbroker]},gateway:${TOKEN[gateway]},agents:${TOKEN[agents]}"
        echo "SERVICE_ACL=ingest=/biobridge.persistence.v1.PersistenceService/WriteEvents|/biobridge.persistence.v1.PersistenceService/DeleteRecords|/biobridge.persistence.v1.PersistenceService/AppendConnectionEvents|/biobridge.persistence.v1.PersistenceService/DeleteUserData;publisher=/biobridge.persistence.v1.PersistenceService/LeaseOutbox|/biobridge.persistence.v1.PersistenceService/RenewOutboxLease|/biobridge.persistence.v1.PersistenceService/AckOutbox|/biobridge.persistence.v1.PersistenceService/NackOutbox|/biobridge.persistence.v1.PersistenceService/GetOutboxStats;tokenbroker=/biobridge.persistence.v1.PersistenceService/AppendConnectionEvents;gateway=/biobridge.biometrics.v1.BiometricsService/*;agents=/biobridge.biometrics.v1.BiometricsService/*"
        ;;
      tokenbroker)
        echo "SERVICE_TOKENS=ingest:${TOKEN[ingest]},gateway:${TOKEN[gateway]}"
        echo "SERVICE_ACL=ingest=/biobridge.tokens.v1.TokenBrokerService/GetAccessToken|/biobridge.tokens.v1.TokenBrokerService/ResolveVendorUser|/biobridge.tokens.v1.TokenBrokerService/ListActiveConnections|/biobridge.tokens.v1.TokenBrokerService/ReportDataArrival|/biobridge.tokens.v1.TokenBrokerService/MarkStaleConnections|/biobridge.tokens.v1.TokenBrokerService/RecordConnectionEvent|/biobridge.tokens.v1.TokenBrokerService/DeleteUserData"
        echo "USER_TOKEN_SECRET=$USER_TOKEN_SECRET"
        echo "TOKEN_ENCRYPTION_KEYS=$TOKEN_KEYS"
        ;;
      ingest)
        echo "SERVICE_TOKENS=gateway:${TOKEN[gateway]},operator:${TOKEN[operator]}"
        echo "SERVICE_ACL=operator=/biobridge.ingest.v1.IngestService/ListJobs|/biobridge.ingest.v1.IngestService/RetryJobs|/biobridge.ingest.v1.IngestService/GetBackfillProgress|/biobridge.ingest.v1.IngestService/DeleteUserData"
        echo "USER_TOKEN_SECRET=$USER_TOKEN_SECRET"
        # Webhook verification keys; vendor APIs point at the devstack's
        # emulator so nothing here reaches the internet.
        echo "WHOOP_CLIENT_SECRET=$(rand_hex 16)"
        echo "OURA_CLIENT_SECRET=$(rand_hex 16)"
        echo "WHOOP_API_URL=http://127.0.0.1:$(port 70)/whoop"
        echo "OURA_API_URL=http://127.0.0.1:$(port 70)/oura"
        ;;
      publisher)
        echo "SERVICE_TOKENS=operator:${TOKEN[operator]}"
        echo "SERVICE_ACL=operator=/biobridge.publisher.v1.PublisherService/*"
        echo "KAFKA_BROKERS=$KAFKA_ADDR"
        echo "KAFKA_TOPIC_PARTITIONS=3"
        echo "KAFKA_REPLICATION_FACTOR=1"
        echo "KAFKA_MIN_INSYNC_REPLICAS=1"
        ;;
      gateway)
        echo "USER_TOKEN_SECRET=$USER_TOKEN_SECRET"
        ;;
    esac
  } > "$work/$svc.env"
  run_container "$NAME-$svc" "$(image "$svc")" "$work/$svc.env"
done
for svc in "${SERVICES[@]}"; do
  wait_ready "http://127.0.0.1:$(admin_port "$svc" 0)/readyz" "$NAME-$svc"
  echo "$svc: /readyz 200"
done
wait_ready "http://127.0.0.1:$(port 0)/readyz" "$NAME-gateway"
echo "gateway: public /readyz 200"

step "each image's healthcheck subcommand, in its running container"
for svc in devstack "${SERVICES[@]}"; do
  c="$NAME-$svc"
  podman exec "$c" /service healthcheck || fail "$c: /service healthcheck failed"
  # The image's own HEALTHCHECK is that command; podman runs it as the
  # container's health check would (no systemd timers here, so on demand).
  hc="$(podman image inspect --format '{{json .HealthCheck.Test}}' "$(image "$svc")")"
  [ "$hc" = '["CMD","/service","healthcheck"]' ] || fail "$(image "$svc"): HEALTHCHECK is $hc"
  podman healthcheck run "$c" || fail "$c: podman healthcheck run failed"
  health="$(podman inspect --format '{{.State.Health.Status}}' "$c")"
  [ "$health" = healthy ] || fail "$c: health status $health"
  echo "$svc: /service healthcheck ok, HEALTHCHECK healthy"
done

step "non-root, read-only root file system, no capabilities (inspect, then from inside)"
for svc in devstack "${SERVICES[@]}"; do
  c="$NAME-$svc"
  img="$(image "$svc")"
  [ "$(podman image inspect --format '{{.User}}' "$img")" = "$UID_WANT:$UID_WANT" ] || fail "$img: image user is not $UID_WANT:$UID_WANT"
  got="$(podman inspect --format '{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.EffectiveCaps}}|{{.BoundingCaps}}|{{.HostConfig.SecurityOpt}}' "$c")"
  [ "$got" = "$UID_WANT:$UID_WANT|true|[]|[]|[no-new-privileges]" ] || fail "$c: inspect says user|read-only|effective caps|bounding caps|security opts = $got"
  [ "$(podman exec "$c" /probe/busybox id -u)" = "$UID_WANT" ] || fail "$c: does not run as $UID_WANT"
  status="$(podman exec "$c" /probe/busybox grep -E '^(CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/1/status | tr -s ' \t' ' ')"
  for want in "CapPrm: 0000000000000000" "CapEff: 0000000000000000" "CapBnd: 0000000000000000" "CapAmb: 0000000000000000" "NoNewPrivs: 1"; do
    grep -qx "$want" <<<"$status" || fail "$c: PID 1 has not '$want':"$'\n'"$status"
  done
  if out="$(podman exec "$c" /probe/busybox touch /etc/tampered 2>&1)"; then
    fail "$c: writing /etc/tampered succeeded"
  fi
  grep -q "Read-only file system" <<<"$out" || fail "$c: the write failed, but not because the root file system is read-only: $out"
  podman exec "$c" /probe/busybox touch /tmp/scratch || fail "$c: /tmp is not writable"
  echo "$svc: uid $UID_WANT, no capabilities, no_new_privs, root file system read-only (write: $out)"
done

step "OCI labels and the stamped version"
for svc in devstack "${SERVICES[@]}"; do
  img="$(image "$svc")"
  labels="$(podman image inspect --format '{{index .Labels "org.opencontainers.image.source"}}|{{index .Labels "org.opencontainers.image.revision"}}|{{index .Labels "org.opencontainers.image.version"}}' "$img")"
  IFS='|' read -r source revision version <<<"$labels"
  [ -n "$source" ] && [ -n "$revision" ] && [ -n "$version" ] || fail "$img: missing OCI labels (source|revision|version = $labels)"
  got="$(podman run --rm --pull never --network none --ulimit host --read-only --cap-drop all "$img" version)"
  [ "$got" = "$svc $version" ] || fail "$img: 'version' prints '$got', the label says $version"
  echo "$img: version $version, revision $revision, source $source"
done

step "HealthKit push through the gateway container, GetLatest on the persistence container"
"$work/roundtrip" -gateway "http://127.0.0.1:$(port 0)" -persistence "127.0.0.1:$(port 3)" \
  -user-token-secret "$USER_TOKEN_SECRET" -service-token "${TOKEN[agents]}"
published=0
for _ in $(seq 1 60); do
  published="$(curl -fsS "http://127.0.0.1:$(admin_port publisher 0)/metrics" | awk '/^publisher_published_total\{topic="biometrics.events.v1"\}/ { print $2 }')"
  [ "${published:-0}" != 0 ] && break
  sleep 0.5
done
[ "${published:-0}" != 0 ] || fail "the publisher container published nothing to Kafka"
echo "publisher container: publisher_published_total{topic=\"biometrics.events.v1\"} $published"

step "the same round trip through the devstack container (development secrets)"
"$work/roundtrip" -gateway "http://127.0.0.1:$(port 50)" -persistence "127.0.0.1:$(port 53)" \
  -user-token-secret dev-user-token-secret-not-for-production-0123456789 -service-token dev-agent-token

step "SIGTERM stops every container with exit code 0"
for c in "$NAME-gateway" "$NAME-ingest" "$NAME-tokenbroker" "$NAME-publisher" "$NAME-persistence" "$NAME-devstack"; do
  podman stop -t 20 "$c" >/dev/null
  code="$(podman inspect --format '{{.State.ExitCode}}' "$c")"
  [ "$code" = 0 ] || fail "$c exited with $code after SIGTERM"
  echo "$c: stopped, exit code 0"
done

psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS ${DB}_devstack WITH (FORCE)"
redis-cli -h 127.0.0.1 -p 6379 -n "$REDIS_DB" flushdb >/dev/null
echo
echo "images-test: every image ran and passed"

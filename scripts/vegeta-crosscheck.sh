#!/usr/bin/env bash
# Cross-checks the in-process benchmark harness with vegeta
# (github.com/tsenart/vegeta, a tool dependency of tools/go.mod) against the
# REST gateway of a devstack started here as its own process:
#   - HealthKit pushes: 40 pushes of 1000 new heart-rate samples over 4 users,
#     4 at a time as fast as they are answered (the shape of
#     ingest.healthkit_readings_per_s);
#   - GetLatest over REST (GET /v1/users/{user}/biometrics/latest, agent
#     token), 32 workers for 5 s over 1000 seeded users with five metrics each
#     (the shape of biometrics.get_latest_rps, which the persistence bench
#     measures over gRPC, without the gateway).
# It also reads the devstack process's peak RSS (VmHWM) after both runs.
# Ports VEGETA_PORT_BASE.. +12 (default 25600), database biobridge_vegeta,
# Redis db VEGETA_REDIS_DB (default 14, flushed). Results in .vegeta/.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${VEGETA_PORT_BASE:-25600}
redis_db=${VEGETA_REDIS_DB:-14}
db=${VEGETA_DB:-biobridge_vegeta}
pg_server=${VEGETA_POSTGRES:-postgres://postgres@127.0.0.1:5432}
hk_pushes=${VEGETA_HK_PUSHES:-40}
hk_samples=${VEGETA_HK_SAMPLES:-1000}
hk_clients=${VEGETA_HK_CLIENTS:-4}
latest_clients=${VEGETA_LATEST_CLIENTS:-32}
latest_duration=${VEGETA_LATEST_DURATION:-5s}
out=.vegeta

mkdir -p bin "$out"
rm -rf "${out:?}"/*
go build -o bin/devstack ./services/devstack/cmd/devstack
go build -o bin/vegeta-targets ./services/devstack/cmd/vegeta-targets
(cd tools && GOWORK=off go build -o ../bin/vegeta github.com/tsenart/vegeta/v12)

psql -q "$pg_server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
redis-cli -h 127.0.0.1 -p 6379 -n "$redis_db" flushdb >/dev/null

port() { echo "127.0.0.1:$((base + $1))"; }
env GATEWAY_HTTP_ADDR="$(port 0)" GATEWAY_ADMIN_ADDR="$(port 1)" \
	INGEST_GRPC_ADDR="$(port 2)" INGEST_ADMIN_ADDR="$(port 3)" \
	TOKENBROKER_GRPC_ADDR="$(port 4)" TOKENBROKER_ADMIN_ADDR="$(port 5)" \
	PERSISTENCE_GRPC_ADDR="$(port 6)" PERSISTENCE_ADMIN_ADDR="$(port 7)" \
	PUBLISHER_GRPC_ADDR="$(port 8)" PUBLISHER_ADMIN_ADDR="$(port 9)" \
	EMULATOR_ADDR="$(port 10)" KAFKA_ADDR="$(port 11)" \
	POSTGRES_URL="$pg_server/$db" REDIS_URL="redis://127.0.0.1:6379/$redis_db" LOG_LEVEL=warn \
	bin/devstack -data-dir "$out/data" >"$out/devstack.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
	curl -fsS -o /dev/null "http://$(port 7)/readyz" 2>/dev/null &&
		curl -fsS -o /dev/null "http://$(port 1)/readyz" 2>/dev/null && break
	kill -0 $pid 2>/dev/null || { echo "devstack exited:"; tail -20 "$out/devstack.log"; exit 1; }
	sleep 0.5
done

gw="http://$(port 0)"
bin/vegeta-targets -gateway "$gw" -out "$out" -pushes "$hk_pushes" -samples "$hk_samples" -users "$hk_clients"

# Each push once (-lazy: the attack ends with the targets, which vegeta
# reports as one more request with status 0 and "no targets to attack";
# its throughput counts only the 200s), hk_clients at a time, each sent as
# soon as a worker is free (-rate=0).
bin/vegeta attack -format=json -lazy -targets="$out/healthkit.targets" -rate=0 \
	-workers="$hk_clients" -max-workers="$hk_clients" -timeout=2m >"$out/healthkit.bin"
bin/vegeta attack -format=json -targets="$out/latest.targets" -rate=0 \
	-workers="$latest_clients" -max-workers="$latest_clients" -duration="$latest_duration" >"$out/latest.bin"

for run in healthkit latest; do
	bin/vegeta report -type=json <"$out/$run.bin" >"$out/$run.json"
	echo "== $run"
	bin/vegeta report <"$out/$run.bin"
done
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
jq -n --slurpfile hk "$out/healthkit.json" --slurpfile gl "$out/latest.json" \
	--argjson samples "$hk_samples" --argjson hwm "$hwm" '{
	healthkit_readings_per_s: ($hk[0].throughput * $samples),
	healthkit_pushes_ok: $hk[0].status_codes["200"], healthkit_p99_ms: ($hk[0].latencies["99th"] / 1e6),
	get_latest_rps: $gl[0].throughput, get_latest_success: $gl[0].success,
	get_latest_p99_ms: ($gl[0].latencies["99th"] / 1e6),
	devstack_peak_rss_mib: ($hwm / 1024)
}' | tee "$out/summary.json"

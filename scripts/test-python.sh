#!/usr/bin/env bash
# Runs the Python client's unittest suite (clients/python/tests) with the
# Debian interpreter, installing the Debian packages it needs when missing.
#
# It starts nothing. The integration tests run against the stack named by
#   BIOBRIDGE_GRPC_ADDR          persistence gRPC, e.g. 127.0.0.1:9103
#   BIOBRIDGE_GATEWAY_URL        gateway, e.g. http://127.0.0.1:8080
#   BIOBRIDGE_SERVICE_TOKEN      a SERVICE_TOKENS token, e.g. dev-agent-token
#   BIOBRIDGE_USER_TOKEN_SECRET  the stack's USER_TOKEN_SECRET
# and are skipped when those are unset, unless BIOBRIDGE_REQUIRE_INTEGRATION=1
# (then they fail). Arguments select tests, e.g. tests.test_redact; -v is
# passed on to unittest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/python-env.sh
. "$root/scripts/python-env.sh"
ensure_python_env

if [ ! -f "$root/gen/python/biobridge/biometrics/v1/biometrics_service_pb2.py" ]; then
  echo "gen/python has no stubs; generating them" >&2
  "$root/scripts/gen-python.sh"
fi

export PYTHONPATH="$root/clients/python:$root/gen/python${PYTHONPATH:+:$PYTHONPATH}"
# No __pycache__ in gen/ (checkgenerate diffs it) or in the client tree.
export PYTHONDONTWRITEBYTECODE=1
# gRPC's C core logs expected TLS handshake failures of the negative tests.
export GRPC_VERBOSITY="${GRPC_VERBOSITY:-NONE}"

if [ -n "${BIOBRIDGE_GRPC_ADDR:-}" ] && [ -n "${BIOBRIDGE_GATEWAY_URL:-}" ] &&
  [ -n "${BIOBRIDGE_SERVICE_TOKEN:-}" ] && [ -n "${BIOBRIDGE_USER_TOKEN_SECRET:-}" ]; then
  echo "python tests: integration against gRPC $BIOBRIDGE_GRPC_ADDR, gateway $BIOBRIDGE_GATEWAY_URL"
elif [ "${BIOBRIDGE_REQUIRE_INTEGRATION:-}" = 1 ]; then
  echo "python tests: BIOBRIDGE_REQUIRE_INTEGRATION=1 but BIOBRIDGE_* are not all set; integration tests will fail"
else
  echo "python tests: BIOBRIDGE_* unset; integration tests skipped"
fi

cd "$root/clients/python"
args=()
names=()
for a in "$@"; do
  case "$a" in
    -*) args+=("$a") ;;
    *) names+=("$a") ;;
  esac
done
# unittest prints its summary ("Ran N tests", then OK or FAILED (...)) and
# exits non-zero on any failure or error; set -e passes that on.
if [ ${#names[@]} -gt 0 ]; then
  exec "$PY" -m unittest "${args[@]}" "${names[@]}"
fi
exec "$PY" -m unittest discover -s tests -t . "${args[@]}"

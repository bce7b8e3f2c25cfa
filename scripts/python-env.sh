# Shared by gen-python.sh and test-python.sh (sourced, not executed): makes sure
# the Debian packages the Python side needs are installed.
#
# PyPI is not reachable from the build machines, so the Python side uses only
# Debian's protoc, gRPC plugin and runtimes. They install into the Debian
# interpreter /usr/bin/python3; a python3 earlier on PATH (pyenv, venv) cannot
# import them, which is why the scripts always name /usr/bin/python3.

PY=/usr/bin/python3
# Debian's protoc, not whatever protoc is first on PATH: the generated code
# is committed, and another protoc version would generate different bytes.
PROTOC=/usr/bin/protoc
PY_DEB_PACKAGES=(protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf)

py_env_ready() {
  [ -x "$PROTOC" ] &&
    [ -x /usr/bin/grpc_python_plugin ] &&
    [ -x "$PY" ] &&
    "$PY" -c 'import grpc, google.protobuf' >/dev/null 2>&1
}

ensure_python_env() {
  if py_env_ready; then
    return 0
  fi
  local cmd="apt-get update && apt-get install -y ${PY_DEB_PACKAGES[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages for the Python client; run as root:" >&2
    echo "  $cmd" >&2
    return 1
  fi
  echo "installing Debian packages: ${PY_DEB_PACKAGES[*]}" >&2
  # Quiet on success; apt prints its own errors.
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PY_DEB_PACKAGES[@]}" >/dev/null
  if ! py_env_ready; then
    echo "Debian packages installed but protoc or '$PY -c \"import grpc\"' still fails" >&2
    return 1
  fi
}

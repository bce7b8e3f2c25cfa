"""The generated stubs, imported in one place with a helpful error."""

try:
    from biobridge.biometrics.v1 import biometrics_service_pb2 as service_pb2
    from biobridge.biometrics.v1 import biometrics_service_pb2_grpc as service_grpc
    from biobridge.biometrics.v1 import event_pb2
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "biobridge: generated stubs biobridge.biometrics.v1 not importable "
        f"({exc}); run scripts/gen-python.sh (make generate) and put gen/python "
        "on PYTHONPATH, using /usr/bin/python3 with python3-grpcio and python3-protobuf"
    ) from exc

__all__ = ["event_pb2", "service_grpc", "service_pb2"]

"""The descriptor set Envoy's gRPC-JSON transcoder loads: the contracts' set from `gen/` plus the
`google.rpc` error types, so that `convert_grpc_status` can render a Gateway error (a
`google.rpc.Status` with `BadRequest`, `RetryInfo`, `RequestInfo` details) as JSON."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor, descriptor_pb2
from google.rpc import error_details_pb2, status_pb2

from chatplane.v1 import gateway_pb2

# gen/python/chatplane/v1/gateway_pb2.py → gen/descriptors/chatplane.binpb
CONTRACTS_DESCRIPTOR_SET = Path(gateway_pb2.__file__).parents[3] / "descriptors" / "chatplane.binpb"

_ERROR_TYPES = (status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR)


def _with_dependencies(
    file: descriptor.FileDescriptor, seen: set[str]
) -> list[descriptor_pb2.FileDescriptorProto]:
    """`file` and everything it imports, dependencies first, skipping files in `seen`."""
    if file.name in seen:
        return []
    seen.add(file.name)
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    for dependency in file.dependencies:
        ordered += _with_dependencies(dependency, seen)
    ordered.append(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))
    return ordered


def edge_descriptor_set(contracts: Path = CONTRACTS_DESCRIPTOR_SET) -> bytes:
    """The serialized FileDescriptorSet for the transcoder."""
    files = descriptor_pb2.FileDescriptorSet.FromString(contracts.read_bytes())
    seen = {f.name for f in files.file}
    for error_file in _ERROR_TYPES:
        files.file.extend(_with_dependencies(error_file, seen))
    return files.SerializeToString()

"""The descriptor pool our generated stubs live in, apart from protobuf's default pool.

Every KServe V2 client ships the same proto: tritonclient's ``grpc_service.proto``
defines package ``inference`` with our message names. Two files defining one
symbol cannot share a pool, so with both in the default pool, whichever is
imported second fails ("duplicate symbol 'inference.ServerLiveRequest'"): a
custom runtime that uses tritonclient could not load. gateway.tools.codegen makes our
stubs add themselves here instead, after the files they import.
"""

from __future__ import annotations

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

POOL = descriptor_pool.DescriptorPool()
for _imported in (descriptor_pb2.DESCRIPTOR, http_pb2.DESCRIPTOR, annotations_pb2.DESCRIPTOR):
    POOL.AddSerializedFile(_imported.serialized_pb)

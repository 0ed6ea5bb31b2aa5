"""Protobuf field names for gRPC messages, from a descriptor set (``--proto-descriptor``).

Without a schema the HTTP/2 decoder shows a message as a raw field tree (numbers
and wire types).  Given a FileDescriptorSet (``protoc --include_imports
--descriptor_set_out=FILE``, ``buf build -o FILE``), a gRPC method's request and
response types are looked up by the call's ``/package.Service/Method`` path and
the message is parsed by the protobuf library: fields by name, enums by name.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError


class SchemaError(ValueError):
    """The descriptor set cannot be read."""


class Schema:
    """The services and messages of one FileDescriptorSet."""

    def __init__(self, path: str) -> None:
        try:
            files = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
        except (OSError, DecodeError) as e:
            raise SchemaError(f"{path}: not a protobuf descriptor set ({e})") from None
        self.pool = descriptor_pool.DescriptorPool()
        try:
            for f in files.file:
                self.pool.Add(f)
        except (TypeError, KeyError) as e:
            raise SchemaError(f"{path}: {e} (build it with --include_imports)") from None
        self.methods = sum(
            len(s.method) for f in files.file for s in f.service
        )  # for the CLI's message

    def decode(self, path: str, request: bool, data: bytes) -> dict[str, object] | None:
        """Message ``data`` of the gRPC call ``path`` (``/pkg.Service/Method``), the
        request's when ``request``, with its fields named; None when the schema does
        not know the method or the bytes are no whole message of its type."""
        service, _, method = path.lstrip("/").rpartition("/")
        try:
            found = self.pool.FindServiceByName(service).methods_by_name[method]
        except KeyError:
            return None
        kind = found.input_type if request else found.output_type
        message = message_factory.GetMessageClass(kind)()
        try:
            message.ParseFromString(data)
        except DecodeError:
            return None
        named: dict[str, object] = json_format.MessageToDict(
            message, preserving_proto_field_name=True
        )
        return named

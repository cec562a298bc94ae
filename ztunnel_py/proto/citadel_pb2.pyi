from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class IstioCertificateRequest(_message.Message):
    __slots__ = ("csr", "metadata", "validity_duration")
    CSR_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_DURATION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    csr: str
    validity_duration: int
    metadata: _struct_pb2.Struct
    def __init__(self, csr: str | None = ..., validity_duration: int | None = ..., metadata: _struct_pb2.Struct | _Mapping | None = ...) -> None: ...

class IstioCertificateResponse(_message.Message):
    __slots__ = ("cert_chain",)
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    cert_chain: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cert_chain: _Iterable[str] | None = ...) -> None: ...

from teller_client._proto.teller.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CloseChannelRequest(_message.Message):
    __slots__ = ("id", "url", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    url: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., url: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class CloseChannelResponse(_message.Message):
    __slots__ = ("id", "cumulative", "status", "receipt_json", "tx_hash", "payment_id", "grace_end")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_JSON_FIELD_NUMBER: _ClassVar[int]
    TX_HASH_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_END_FIELD_NUMBER: _ClassVar[int]
    id: str
    cumulative: str
    status: int
    receipt_json: str
    tx_hash: str
    payment_id: str
    grace_end: int
    def __init__(self, id: _Optional[str] = ..., cumulative: _Optional[str] = ..., status: _Optional[int] = ..., receipt_json: _Optional[str] = ..., tx_hash: _Optional[str] = ..., payment_id: _Optional[str] = ..., grace_end: _Optional[int] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("status", "headers", "body", "url", "method")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Header]
    body: bytes
    url: str
    method: str
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[_common_pb2.Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., url: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("challenge", "wallet_id", "max_amount", "idempotency_key")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    challenge: Challenge
    wallet_id: str
    max_amount: str
    idempotency_key: str
    def __init__(self, challenge: _Optional[_Union[Challenge, _Mapping]] = ..., wallet_id: _Optional[str] = ..., max_amount: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("header_name", "header_value", "requirement", "payment_id", "headers")
    HEADER_NAME_FIELD_NUMBER: _ClassVar[int]
    HEADER_VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    header_name: str
    header_value: str
    requirement: _common_pb2.Requirement
    payment_id: str
    headers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Header]
    def __init__(self, header_name: _Optional[str] = ..., header_value: _Optional[str] = ..., requirement: _Optional[_Union[_common_pb2.Requirement, _Mapping]] = ..., payment_id: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[_common_pb2.Header, _Mapping]]] = ...) -> None: ...

class ListWalletsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSpendRequest(_message.Message):
    __slots__ = ("wallet_id",)
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    def __init__(self, wallet_id: _Optional[str] = ...) -> None: ...

class ListChannelsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: str
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetChannelVouchersRequest(_message.Message):
    __slots__ = ("id", "page_size", "page_token")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    page_size: int
    page_token: str
    def __init__(self, id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RecordOutcomeRequest(_message.Message):
    __slots__ = ("payment_id", "status", "headers", "body")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Header]
    body: bytes
    def __init__(self, payment_id: _Optional[str] = ..., status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[_common_pb2.Header, _Mapping]]] = ..., body: _Optional[bytes] = ...) -> None: ...

class PayRequest(_message.Message):
    __slots__ = ("url", "method", "headers", "body", "wallet_id", "max_amount", "idempotency_key", "protocols", "max_stream_amount")
    URL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    url: str
    method: str
    headers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Header]
    body: bytes
    wallet_id: str
    max_amount: str
    idempotency_key: str
    protocols: _containers.RepeatedScalarFieldContainer[str]
    max_stream_amount: str
    def __init__(self, url: _Optional[str] = ..., method: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[_common_pb2.Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., wallet_id: _Optional[str] = ..., max_amount: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., protocols: _Optional[_Iterable[str]] = ..., max_stream_amount: _Optional[str] = ...) -> None: ...

class PayResponse(_message.Message):
    __slots__ = ("head", "body_chunk")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    BODY_CHUNK_FIELD_NUMBER: _ClassVar[int]
    head: PayHead
    body_chunk: bytes
    def __init__(self, head: _Optional[_Union[PayHead, _Mapping]] = ..., body_chunk: _Optional[bytes] = ...) -> None: ...

class PayHead(_message.Message):
    __slots__ = ("status", "headers", "payment", "receipt_json", "payment_header", "already_paid")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_HEADER_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PAID_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Header]
    payment: _common_pb2.PaymentRecord
    receipt_json: str
    payment_header: str
    already_paid: bool
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[_common_pb2.Header, _Mapping]]] = ..., payment: _Optional[_Union[_common_pb2.PaymentRecord, _Mapping]] = ..., receipt_json: _Optional[str] = ..., payment_header: _Optional[str] = ..., already_paid: _Optional[bool] = ...) -> None: ...

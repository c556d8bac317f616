from teller_client._proto.teller.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tenant(_message.Message):
    __slots__ = ("id", "name", "state", "created_at_ms", "frozen", "frozen_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    FROZEN_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: str
    created_at_ms: int
    frozen: bool
    frozen_reason: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., frozen: _Optional[bool] = ..., frozen_reason: _Optional[str] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DisableTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class EnableTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class IssueTokenRequest(_message.Message):
    __slots__ = ("tenant_id", "description")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    description: str
    def __init__(self, tenant_id: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class IssueTokenResponse(_message.Message):
    __slots__ = ("token_id", "token")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    token: str
    def __init__(self, token_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "tenant_id", "description", "created_at_ms", "revoked_at_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    description: str
    created_at_ms: int
    revoked_at_ms: int
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., description: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., revoked_at_ms: _Optional[int] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class DisableWalletRequest(_message.Message):
    __slots__ = ("tenant_id", "wallet_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    wallet_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...

class CreateWalletRequest(_message.Message):
    __slots__ = ("tenant_id", "label")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    label: str
    def __init__(self, tenant_id: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class ImportWalletRequest(_message.Message):
    __slots__ = ("tenant_id", "label", "private_key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    label: str
    private_key: str
    def __init__(self, tenant_id: _Optional[str] = ..., label: _Optional[str] = ..., private_key: _Optional[str] = ...) -> None: ...

class AdminListWalletsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class SpendPolicy(_message.Message):
    __slots__ = ("tenant_id", "wallet_id", "document_json", "updated_at_ms")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    wallet_id: str
    document_json: str
    updated_at_ms: int
    def __init__(self, tenant_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., document_json: _Optional[str] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: SpendPolicy
    def __init__(self, policy: _Optional[_Union[SpendPolicy, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("tenant_id", "wallet_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    wallet_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...

class SetFrozenRequest(_message.Message):
    __slots__ = ("tenant_id", "wallet_id", "frozen", "reason")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    wallet_id: str
    frozen: bool
    reason: str
    def __init__(self, tenant_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., frozen: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SetFrozenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdminGetSpendRequest(_message.Message):
    __slots__ = ("tenant_id", "wallet_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    wallet_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
    __slots__ = ("tenant_id", "state", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_page_token")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[_common_pb2.PaymentRecord]
    next_page_token: str
    def __init__(self, payments: _Optional[_Iterable[_Union[_common_pb2.PaymentRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VoidPaymentRequest(_message.Message):
    __slots__ = ("payment_id", "reason")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    reason: str
    def __init__(self, payment_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("transitions", "errors")
    class TransitionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    transitions: _containers.ScalarMap[str, int]
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transitions: _Optional[_Mapping[str, int]] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class AdminListChannelsRequest(_message.Message):
    __slots__ = ("tenant_id", "state", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AdminGetChannelVouchersRequest(_message.Message):
    __slots__ = ("tenant_id", "id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AdminCloseChannelRequest(_message.Message):
    __slots__ = ("tenant_id", "id", "force")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    id: str
    force: bool
    def __init__(self, tenant_id: _Optional[str] = ..., id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class AdminCloseChannelResponse(_message.Message):
    __slots__ = ("id", "cumulative", "tx_hash", "payment_id", "grace_end")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FIELD_NUMBER: _ClassVar[int]
    TX_HASH_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_END_FIELD_NUMBER: _ClassVar[int]
    id: str
    cumulative: str
    tx_hash: str
    payment_id: str
    grace_end: int
    def __init__(self, id: _Optional[str] = ..., cumulative: _Optional[str] = ..., tx_hash: _Optional[str] = ..., payment_id: _Optional[str] = ..., grace_end: _Optional[int] = ...) -> None: ...

class OperatorIdentity(_message.Message):
    __slots__ = ("id", "name", "created_at_ms", "created_by", "revoked_at_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    created_at_ms: int
    created_by: str
    revoked_at_ms: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., revoked_at_ms: _Optional[int] = ...) -> None: ...

class CreateOperatorRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateOperatorResponse(_message.Message):
    __slots__ = ("operator", "token")
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    operator: OperatorIdentity
    token: str
    def __init__(self, operator: _Optional[_Union[OperatorIdentity, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListOperatorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOperatorsResponse(_message.Message):
    __slots__ = ("operators",)
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    operators: _containers.RepeatedCompositeFieldContainer[OperatorIdentity]
    def __init__(self, operators: _Optional[_Iterable[_Union[OperatorIdentity, _Mapping]]] = ...) -> None: ...

class RevokeOperatorRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Requirement(_message.Message):
    __slots__ = ("protocol", "version", "scheme", "network", "asset", "amount", "pay_to")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PAY_TO_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    version: int
    scheme: str
    network: str
    asset: str
    amount: str
    pay_to: str
    def __init__(self, protocol: _Optional[str] = ..., version: _Optional[int] = ..., scheme: _Optional[str] = ..., network: _Optional[str] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., pay_to: _Optional[str] = ...) -> None: ...

class Wallet(_message.Message):
    __slots__ = ("id", "tenant_id", "label", "address", "state", "created_at_ms", "frozen", "frozen_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    FROZEN_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    label: str
    address: str
    state: str
    created_at_ms: int
    frozen: bool
    frozen_reason: str
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., label: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., frozen: _Optional[bool] = ..., frozen_reason: _Optional[str] = ...) -> None: ...

class WindowSpend(_message.Message):
    __slots__ = ("window", "limit", "spent", "remaining", "window_start_ms", "window_end_ms", "reserved", "scope", "kind")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    window: str
    limit: str
    spent: str
    remaining: str
    window_start_ms: int
    window_end_ms: int
    reserved: str
    scope: str
    kind: str
    def __init__(self, window: _Optional[str] = ..., limit: _Optional[str] = ..., spent: _Optional[str] = ..., remaining: _Optional[str] = ..., window_start_ms: _Optional[int] = ..., window_end_ms: _Optional[int] = ..., reserved: _Optional[str] = ..., scope: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class SpendStatus(_message.Message):
    __slots__ = ("tenant_id", "windows")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    windows: _containers.RepeatedCompositeFieldContainer[WindowSpend]
    def __init__(self, tenant_id: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[WindowSpend, _Mapping]]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "tenant_id", "at_ms", "actor", "action", "outcome", "reason", "wallet_id", "payment_id", "amount", "asset", "network", "payee", "resource_url", "details_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_URL_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    tenant_id: str
    at_ms: int
    actor: str
    action: str
    outcome: str
    reason: str
    wallet_id: str
    payment_id: str
    amount: str
    asset: str
    network: str
    payee: str
    resource_url: str
    details_json: str
    def __init__(self, id: _Optional[int] = ..., tenant_id: _Optional[str] = ..., at_ms: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., wallet_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount: _Optional[str] = ..., asset: _Optional[str] = ..., network: _Optional[str] = ..., payee: _Optional[str] = ..., resource_url: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class AuditFilter(_message.Message):
    __slots__ = ("tenant_id", "action", "wallet_id", "outcome", "since_ms", "until_ms")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    action: str
    wallet_id: str
    outcome: str
    since_ms: int
    until_ms: int
    def __init__(self, tenant_id: _Optional[str] = ..., action: _Optional[str] = ..., wallet_id: _Optional[str] = ..., outcome: _Optional[str] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: AuditFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[AuditFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListWalletsResponse(_message.Message):
    __slots__ = ("wallets",)
    WALLETS_FIELD_NUMBER: _ClassVar[int]
    wallets: _containers.RepeatedCompositeFieldContainer[Wallet]
    def __init__(self, wallets: _Optional[_Iterable[_Union[Wallet, _Mapping]]] = ...) -> None: ...

class PaymentRecord(_message.Message):
    __slots__ = ("id", "tenant_id", "wallet_id", "protocol", "version", "scheme", "network", "asset", "pay_to", "amount", "state", "state_reason", "tx_hash", "released", "valid_before", "created_at_ms", "updated_at_ms", "resource_url", "nonce")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    PAY_TO_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    TX_HASH_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    VALID_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_URL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    wallet_id: str
    protocol: str
    version: int
    scheme: str
    network: str
    asset: str
    pay_to: str
    amount: str
    state: str
    state_reason: str
    tx_hash: str
    released: bool
    valid_before: int
    created_at_ms: int
    updated_at_ms: int
    resource_url: str
    nonce: str
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., protocol: _Optional[str] = ..., version: _Optional[int] = ..., scheme: _Optional[str] = ..., network: _Optional[str] = ..., asset: _Optional[str] = ..., pay_to: _Optional[str] = ..., amount: _Optional[str] = ..., state: _Optional[str] = ..., state_reason: _Optional[str] = ..., tx_hash: _Optional[str] = ..., released: _Optional[bool] = ..., valid_before: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., resource_url: _Optional[str] = ..., nonce: _Optional[str] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class Channel(_message.Message):
    __slots__ = ("id", "tenant_id", "wallet_id", "network", "escrow", "channel_id", "token", "payee", "deposit", "spent", "remaining", "state", "created_at_ms", "updated_at_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ESCROW_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    DEPOSIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    wallet_id: str
    network: str
    escrow: str
    channel_id: str
    token: str
    payee: str
    deposit: str
    spent: str
    remaining: str
    state: str
    created_at_ms: int
    updated_at_ms: int
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., network: _Optional[str] = ..., escrow: _Optional[str] = ..., channel_id: _Optional[str] = ..., token: _Optional[str] = ..., payee: _Optional[str] = ..., deposit: _Optional[str] = ..., spent: _Optional[str] = ..., remaining: _Optional[str] = ..., state: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class Voucher(_message.Message):
    __slots__ = ("cumulative", "signature", "created_at_ms")
    CUMULATIVE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    cumulative: str
    signature: str
    created_at_ms: int
    def __init__(self, cumulative: _Optional[str] = ..., signature: _Optional[str] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class ListChannelsResponse(_message.Message):
    __slots__ = ("channels", "next_page_token")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedCompositeFieldContainer[Channel]
    next_page_token: str
    def __init__(self, channels: _Optional[_Iterable[_Union[Channel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetChannelVouchersResponse(_message.Message):
    __slots__ = ("channel", "vouchers", "next_page_token")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    VOUCHERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    vouchers: _containers.RepeatedCompositeFieldContainer[Voucher]
    next_page_token: str
    def __init__(self, channel: _Optional[_Union[Channel, _Mapping]] = ..., vouchers: _Optional[_Iterable[_Union[Voucher, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

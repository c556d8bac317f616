// Plain result types (no protobuf in callers' code). Amounts are bigint atomic units.

export type HeaderList = Array<[string, string]>;

export interface Requirement {
  protocol: string; // "x402" | "mpp"
  version: number;
  scheme: string;
  network: string; // CAIP-2
  asset: string;
  amount: bigint;
  payTo: string;
}

export interface SignedPayment {
  headerName: string;
  headerValue: string;
  paymentId: string;
  requirement: Requirement;
  /** Every header to set on the paid retry: the proof and, for MPP with a key, Idempotency-Key. */
  retryHeaders: Record<string, string>;
}

/** A signed payment and what became of it (signed, settled, failed, expired, voided). */
export interface PaymentRecord {
  id: string;
  tenantId: string;
  walletId: string;
  protocol: string;
  network: string;
  asset: string;
  payTo: string;
  amount: bigint;
  state: string;
  stateReason: string;
  txHash: string;
  released: boolean;
  validBefore: number;
  createdAtMs: number;
  updatedAtMs: number;
  resourceUrl: string;
  nonce: string;
}

export interface Wallet {
  id: string;
  tenantId: string;
  label: string;
  address: string;
  state: string;
  createdAtMs: number;
}

export interface WindowSpend {
  scope: string;
  window: string;
  kind: string;
  limit: bigint;
  spent: bigint;
  reserved: bigint;
  remaining: bigint;
  windowStartMs: number;
  windowEndMs: number;
}

/**
 * An MPP session payment channel a wallet opened, and how much of its deposit the
 * vouchers Teller signed have promised (open, closing or closed).
 */
export interface Channel {
  /** Teller's id for the channel: what getChannel takes. */
  id: string;
  tenantId: string;
  walletId: string;
  network: string; // CAIP-2
  escrow: string;
  /** The escrow's id for the channel, 0x + 64 hex. */
  channelId: string;
  token: string;
  payee: string;
  deposit: bigint;
  /** The highest voucher's total: all the payee can take. */
  spent: bigint;
  remaining: bigint;
  state: string;
  createdAtMs: number;
  updatedAtMs: number;
}

/** A voucher Teller signed: the payee may take `cumulative` in total. */
export interface Voucher {
  cumulative: bigint;
  signature: string;
  createdAtMs: number;
}

/** listChannels' result: channels newest first, and the next page's token ("" at the end). */
export interface ChannelPage {
  channels: Channel[];
  nextPageToken: string;
}

/** getChannel's result: the channel and a page of its vouchers, highest total first. */
export interface ChannelVouchers {
  channel: Channel;
  vouchers: Voucher[];
  nextPageToken: string;
}

/** What pay() returns: the server's final answer and, when a 402 was paid, the payment and receipt. */
export interface PaidResponse {
  status: number;
  headers: HeaderList;
  body: Buffer;
  payment: PaymentRecord | undefined;
  receipt: Record<string, unknown> | undefined;
  paymentHeader: string;
}

/** payStream's result: the response head (body empty) and the body as it arrives. */
export interface PaidStream {
  response: PaidResponse;
  /** The body's chunks as Teller relays them; throws the call's error (e.g. LimitExceeded stream_cap) where it ends. */
  chunks: AsyncIterable<Buffer>;
  /** Stop reading: cancels the Pay call (Teller stops paying the stream's vouchers). */
  cancel(): void;
}

/** closeChannel's result: the final voucher's total (what the payee is paid; the rest
 * of the deposit is refunded), the server's HTTP status and its session receipt
 * (txHash: the close transaction), when it sent one. */
export interface ClosedChannel {
  id: string;
  cumulative: bigint;
  status: number;
  receipt: Record<string, unknown> | undefined;
  /** A forced close: the requestClose transaction, the payment holding its fee, and
   * the chain time (unix seconds) from which the reconciler withdraws (0: not read yet). */
  txHash: string;
  paymentId: string;
  graceEnd: number;
}

/** Attached by wrapFetch and the axios interceptor to a response whose 402 they paid. */
export interface PaymentInfo {
  paymentId: string;
  headerName: string;
  requirement: Requirement;
  idempotencyKey: string;
  /** As Teller recorded it after the retry; undefined when reporting failed. */
  record: PaymentRecord | undefined;
  /** The server's decoded receipt, if it sent one. */
  receipt: Record<string, unknown> | undefined;
  /** Why reporting the outcome failed; the paid response is returned anyway. */
  outcomeError: Error | undefined;
}

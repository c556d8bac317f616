export { DEFAULT_RETRY, IDEMPOTENT, NO_RETRY, TellerClient, callKey } from "./client";
export type { CallOptions, ClientOptions, HeadersInit, PageArgs, PayArgs, RetryPolicy, SignArgs } from "./client";
export * from "./errors";
export { IDEMPOTENCY_HEADER, decodeReceipt, paymentInfo, withTeller, wrapFetch } from "./integrations";
export type { PayOptions } from "./integrations";
export type * from "./types";

// One-line 402 handling for a service's own HTTP client, as x402-fetch and
// mppx's fetch do: on a 402 ask Teller's Sign for the proof, retry once with it,
// report the outcome (best-effort) and attach a PaymentInfo to the response.
//
// Exactly once: each payment is made under an idempotency key naming one logical
// request: the request's own Idempotency-Key header when the caller set one,
// else a key made for the Request object (fetch) or the request config (axios)
// and kept with it. Sending the same Request/config again is a retry and pays at
// most once; two separate calls are two payments.
import { randomUUID } from "node:crypto";
import type { AxiosInstance, AxiosRequestConfig, AxiosResponse } from "axios";
import type { TellerClient } from "./client";
import { TellerError } from "./errors";
import type { HeaderList, PaymentInfo, SignedPayment } from "./types";

export const IDEMPOTENCY_HEADER = "Idempotency-Key";
const RECEIPT_HEADERS = ["payment-response", "x-payment-response", "payment-receipt"];
const MAX_CHALLENGE_BYTES = 256 * 1024;

export interface PayOptions {
  /** The most to pay for one request, in atomic units. */
  maxAmount?: bigint | number;
  /** Called when reporting the outcome fails (the paid response is returned anyway). */
  onOutcomeError?: (error: Error, paymentId: string) => void;
}

/** The server's settlement receipt (x402 PAYMENT-RESPONSE / X-PAYMENT-RESPONSE, MPP Payment-Receipt), decoded. */
export function decodeReceipt(get: (name: string) => string | null | undefined): Record<string, unknown> | undefined {
  for (const name of RECEIPT_HEADERS) {
    const value = get(name)?.trim();
    if (!value) continue;
    try {
      const doc: unknown = JSON.parse(Buffer.from(value, /[-_]/.test(value) ? "base64url" : "base64").toString("utf8"));
      if (doc && typeof doc === "object" && !Array.isArray(doc)) return doc as Record<string, unknown>;
    } catch {
      // not this header's encoding: try the next
    }
  }
  return undefined;
}

const infos = new WeakMap<object, PaymentInfo>();
const requestKeys = new WeakMap<object, string>();

/** The payment wrapFetch or the axios interceptor made for this response, if any. */
export function paymentInfo(response: object): PaymentInfo | undefined {
  return infos.get(response);
}

const newKey = () => `req_${randomUUID().replaceAll("-", "")}`;

async function report(teller: TellerClient, signed: SignedPayment, status: number, headers: HeaderList,
  options: PayOptions): Promise<[PaymentInfo["record"], Error | undefined]> {
  // An MPP session voucher is no payment of its own (its channel's open is one): nothing to report.
  if (!signed.paymentId) return [undefined, undefined];
  try {
    return [await teller.recordOutcome(signed.paymentId, { status, headers }), undefined];
  } catch (e) {
    // Best-effort: the reconciler settles the payment from the chain anyway.
    const error = e instanceof Error ? e : new TellerError(String(e));
    options.onOutcomeError?.(error, signed.paymentId);
    return [undefined, error];
  }
}

type Fetch = typeof fetch;

/**
 * `const pay = wrapFetch(fetch, teller, walletId)`: a fetch that pays 402s through Teller.
 * A policy denial rejects with the typed TellerError (LimitExceeded, PermissionDenied, ...).
 */
export function wrapFetch(fetchImpl: Fetch, teller: TellerClient, walletId: string, options: PayOptions = {}): Fetch {
  return async (input: Parameters<Fetch>[0], init?: Parameters<Fetch>[1]): Promise<Response> => {
    const request = new Request(input, init);
    const original = input instanceof Request ? input : request;
    const key = request.headers.get(IDEMPOTENCY_HEADER) ?? requestKeys.get(original) ?? newKey();
    requestKeys.set(original, key);
    const body = request.body === null ? undefined : await request.arrayBuffer(); // kept for the one retry
    const send = (extra: Record<string, string>) => {
      const headers = new Headers(request.headers);
      for (const [k, v] of Object.entries(extra)) headers.set(k, v);
      return fetchImpl(request.url, {
        method: request.method, headers, body, redirect: request.redirect, signal: request.signal,
      });
    };
    const first = await send({});
    if (first.status !== 402) return first;
    const challenge = Buffer.from(await first.arrayBuffer()).subarray(0, MAX_CHALLENGE_BYTES);
    const signed = await teller.sign({
      status: 402, headers: [...first.headers], body: challenge, url: request.url, method: request.method, walletId,
      maxAmount: options.maxAmount, idempotencyKey: key,
    });
    const final = await send(signed.retryHeaders);
    const [record, outcomeError] = await report(teller, signed, final.status, [...final.headers], options);
    infos.set(final, {
      paymentId: signed.paymentId, headerName: signed.headerName, requirement: signed.requirement, idempotencyKey: key,
      record, outcomeError, receipt: decodeReceipt((n) => final.headers.get(n)),
    });
    return final;
  };
}

type Config = AxiosRequestConfig & { tellerPaid?: boolean; tellerIdempotencyKey?: string };

function axiosHeaders(headers: AxiosResponse["headers"]): HeaderList {
  const out: HeaderList = [];
  for (const [k, v] of Object.entries(headers ?? {})) {
    if (Array.isArray(v)) for (const item of v) out.push([k, String(item)]);
    else if (v !== undefined && v !== null) out.push([k, String(v)]);
  }
  return out;
}

/**
 * Adds a response interceptor to an axios instance that pays 402s through Teller.
 * Returns the interceptor id (`instance.interceptors.response.eject(id)` removes it).
 */
export function withTeller(instance: AxiosInstance, teller: TellerClient, walletId: string, options: PayOptions = {}): number {
  const pay = async (response: AxiosResponse): Promise<AxiosResponse> => {
    const config = response.config as Config;
    const given = (config.headers as Record<string, unknown> | undefined)?.[IDEMPOTENCY_HEADER];
    const key = typeof given === "string" && given ? given : config.tellerIdempotencyKey ?? newKey();
    config.tellerIdempotencyKey = key;
    const raw = response.data;
    const challenge = raw === undefined || raw === null ? Buffer.alloc(0)
      : Buffer.isBuffer(raw) ? raw : Buffer.from(typeof raw === "string" ? raw : JSON.stringify(raw));
    const url = instance.getUri(config);
    const signed = await teller.sign({
      status: 402, headers: axiosHeaders(response.headers), body: challenge.subarray(0, MAX_CHALLENGE_BYTES), url,
      method: (config.method ?? "get").toUpperCase(), walletId, maxAmount: options.maxAmount, idempotencyKey: key,
    });
    const retry: Config = {
      ...config, tellerPaid: true, validateStatus: () => true,
      headers: { ...(config.headers as Record<string, string>), ...signed.retryHeaders },
    };
    const final = await instance.request(retry);
    const [record, outcomeError] = await report(teller, signed, final.status, axiosHeaders(final.headers), options);
    infos.set(final, {
      paymentId: signed.paymentId, headerName: signed.headerName, requirement: signed.requirement, idempotencyKey: key,
      record, outcomeError, receipt: decodeReceipt((n) => {
        const v = (final.headers as Record<string, unknown>)[n];
        return typeof v === "string" ? v : undefined;
      }),
    });
    const accept = config.validateStatus ?? ((s: number) => s >= 200 && s < 300);
    if (!accept(final.status)) {
      const err = new Error(`Request failed with status code ${final.status}`) as Error & { response: AxiosResponse; config: Config };
      err.response = final;
      err.config = config;
      throw err;
    }
    return final;
  };
  return instance.interceptors.response.use(
    (response) => (response.status === 402 && !(response.config as Config).tellerPaid ? pay(response) : response),
    (error: { response?: AxiosResponse; config?: Config }) => {
      const response = error?.response;
      if (response?.status === 402 && !(response.config as Config).tellerPaid) return pay(response);
      return Promise.reject(error);
    },
  );
}

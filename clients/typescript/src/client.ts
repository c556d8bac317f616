// The gRPC client for Teller's PaymentService on @grpc/grpc-js, with the Python
// client's rules: a deadline bounds every call (retries included, no waiting
// for a connection beyond it), and only idempotent calls are repeated.
import { randomBytes } from "node:crypto";
import { ChannelCredentials, ClientReadableStream, Metadata, ServiceError, credentials as grpcCredentials, status } from "@grpc/grpc-js";
import * as common from "./gen/teller/v1/common";
import * as payment from "./gen/teller/v1/payment";
import { DeadlineExceeded, Internal, TellerError, fromServiceError } from "./errors";
import type {
  Channel, ChannelPage, ChannelVouchers, ClosedChannel, HeaderList, PaidResponse, PaidStream, PaymentRecord, SignedPayment,
  Wallet, WindowSpend,
} from "./types";

export type HeadersInit = HeaderList | Record<string, string> | Iterable<[string, string]>;

export interface RetryPolicy {
  /** Attempts in all, the first included (1 turns retries off). */
  maxAttempts: number;
  /** Pause before the first retry (ms), doubled each time up to maxBackoffMs. */
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 4, initialBackoffMs: 100, maxBackoffMs: 2000 };
export const NO_RETRY: RetryPolicy = { maxAttempts: 1, initialBackoffMs: 0, maxBackoffMs: 0 };

/**
 * Calls safe to repeat on UNAVAILABLE or CANCELLED: reads, recordOutcome (its state
 * changes are guarded and happen once), and sign, which always carries an idempotency
 * key (the caller's, or one made for the call: a repeat returns the payment already
 * made). pay is never repeated.
 */
export const IDEMPOTENT = new Set([
  "getPayment", "listWallets", "getSpend", "listAuditEvents", "recordOutcome", "listChannels", "getChannelVouchers",
]);

/**
 * Worth another attempt: the call did not reach a Teller that could answer
 * (UNAVAILABLE), or the worker stopped while holding it (CANCELLED: a gRPC server
 * that shuts down cancels calls it received but had not yet handed to a handler,
 * grpc/grpc#41785; this client never cancels a unary call itself).
 */
const RETRY_ON = new Set<number>([status.UNAVAILABLE, status.CANCELLED]);

/** The key a sign call is sent with: the caller's, or one for this call alone, reused by its retries. */
export function callKey(idempotencyKey?: string): string {
  return idempotencyKey || `call_${randomBytes(16).toString("hex")}`;
}

export interface ClientOptions {
  /** TLS credentials; default: plaintext (loopback or a private network only). */
  credentials?: ChannelCredentials;
  /** Every unary call's deadline in ms, retries included (default 10 s). */
  timeoutMs?: number;
  /** How long pay waits for the response head in ms (default 120 s). */
  payTimeoutMs?: number;
  retry?: RetryPolicy;
}

export interface CallOptions {
  /** This call's deadline in ms; overrides the client's. */
  timeoutMs?: number;
}

export interface SignArgs extends CallOptions {
  status: number;
  headers: HeadersInit;
  body?: Uint8Array | string;
  url: string;
  method?: string;
  walletId: string;
  maxAmount?: bigint | number;
  /** Names one logical purchase: a repeat for the same purchase returns the same payment. */
  idempotencyKey?: string;
}

export interface PageArgs extends CallOptions {
  /** Default 100, at most 1000. */
  pageSize?: number;
  /** The nextPageToken of the previous page. */
  pageToken?: string;
}

export interface PayArgs extends CallOptions {
  walletId: string;
  method?: string;
  headers?: HeadersInit;
  body?: Uint8Array | string;
  maxAmount?: bigint | number;
  idempotencyKey?: string;
  protocols?: string[];
  /**
   * The most a metered MPP session stream's vouchers may add in this call (base
   * units); past it the stream ends with LimitExceeded (reason stream_cap), after
   * every chunk paid for so far.
   */
  maxStreamAmount?: bigint | number;
}

export function headerList(headers: HeadersInit | undefined): HeaderList {
  if (headers === undefined) return [];
  if (Symbol.iterator in Object(headers)) return Array.from(headers as Iterable<[string, string]>, ([k, v]) => [k, v]);
  return Object.entries(headers as Record<string, string>);
}

const toHeaders = (h: HeadersInit | undefined): common.Header[] => headerList(h).map(([name, value]) => ({ name, value }));
const bytes = (b: Uint8Array | string | undefined): Buffer =>
  b === undefined ? Buffer.alloc(0) : typeof b === "string" ? Buffer.from(b, "utf8") : Buffer.from(b);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function paymentRecord(p: common.PaymentRecord): PaymentRecord {
  return {
    id: p.id, tenantId: p.tenantId, walletId: p.walletId, protocol: p.protocol, network: p.network, asset: p.asset,
    payTo: p.payTo, amount: BigInt(p.amount || "0"), state: p.state, stateReason: p.stateReason, txHash: p.txHash,
    released: p.released, validBefore: Number(p.validBefore), createdAtMs: Number(p.createdAtMs),
    updatedAtMs: Number(p.updatedAtMs), resourceUrl: p.resourceUrl, nonce: p.nonce,
  };
}

function channel(c: common.Channel): Channel {
  return {
    id: c.id, tenantId: c.tenantId, walletId: c.walletId, network: c.network, escrow: c.escrow, channelId: c.channelId,
    token: c.token, payee: c.payee, deposit: BigInt(c.deposit || "0"), spent: BigInt(c.spent || "0"),
    remaining: BigInt(c.remaining || "0"), state: c.state, createdAtMs: Number(c.createdAtMs),
    updatedAtMs: Number(c.updatedAtMs),
  };
}

function wallet(w: common.Wallet): Wallet {
  return { id: w.id, tenantId: w.tenantId, label: w.label, address: w.address, state: w.state, createdAtMs: Number(w.createdAtMs) };
}

type Unary<Req, Res> = (req: Req, md: Metadata, opts: { deadline: Date }, cb: (e: ServiceError | null, r: Res) => void) => unknown;

export class TellerClient {
  private readonly stub: payment.PaymentServiceClient;
  private readonly metadata: Metadata;
  private readonly timeoutMs: number;
  private readonly payTimeoutMs: number;
  private readonly retry: RetryPolicy;

  constructor(target: string, token: string, options: ClientOptions = {}) {
    this.stub = new payment.PaymentServiceClient(target, options.credentials ?? grpcCredentials.createInsecure(), {
      "grpc.initial_reconnect_backoff_ms": 200,
      "grpc.max_reconnect_backoff_ms": 5000,
      "grpc.keepalive_time_ms": 30000,
    });
    this.metadata = new Metadata();
    this.metadata.set("authorization", `Bearer ${token}`);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.payTimeoutMs = options.payTimeoutMs ?? 120_000;
    this.retry = options.retry ?? DEFAULT_RETRY;
  }

  close(): void {
    this.stub.close();
  }

  private async call<Req, Res>(name: string, req: Req, opts: CallOptions = {}, idempotent = IDEMPOTENT.has(name)): Promise<Res> {
    const budget = opts.timeoutMs ?? this.timeoutMs;
    const deadline = Date.now() + budget;
    const method = (this.stub as unknown as Record<string, Unary<Req, Res>>)[name].bind(this.stub) as Unary<Req, Res>;
    let pause = this.retry.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      if (Date.now() >= deadline) throw new DeadlineExceeded(`${name}: no answer from Teller within ${budget} ms`, status.DEADLINE_EXCEEDED);
      let error: TellerError;
      try {
        return await new Promise<Res>((resolve, reject) => {
          // grpc-js fails fast (waitForReady is false by default) and never waits past the deadline.
          method(req, this.metadata, { deadline: new Date(deadline) }, (e, r) => (e ? reject(e) : resolve(r)));
        });
      } catch (e) {
        error = fromServiceError(e as ServiceError);
      }
      const again = idempotent && RETRY_ON.has(error.code) && attempt < this.retry.maxAttempts
        && Date.now() + pause < deadline;
      if (!again) throw error;
      await sleep(pause);
      pause = Math.min(pause * 2, this.retry.maxBackoffMs);
    }
  }

  /** Hand Teller the 402 you received; get back the headers to retry with. */
  async sign(args: SignArgs): Promise<SignedPayment> {
    const req: payment.SignRequest = {
      challenge: { status: args.status, headers: toHeaders(args.headers), body: bytes(args.body), url: args.url, method: args.method ?? "GET" },
      walletId: args.walletId,
      maxAmount: args.maxAmount === undefined ? "" : String(args.maxAmount),
      idempotencyKey: callKey(args.idempotencyKey),
    };
    const r = await this.call<payment.SignRequest, payment.SignResponse>("sign", req, args, true);
    const q = r.requirement;
    const retryHeaders: Record<string, string> = {};
    for (const h of r.headers) retryHeaders[h.name] = h.value;
    retryHeaders[r.headerName] = r.headerValue;
    return {
      headerName: r.headerName, headerValue: r.headerValue, paymentId: r.paymentId, retryHeaders,
      requirement: {
        protocol: q?.protocol ?? "", version: q?.version ?? 0, scheme: q?.scheme ?? "", network: q?.network ?? "",
        asset: q?.asset ?? "", amount: BigInt(q?.amount || "0"), payTo: q?.payTo ?? "",
      },
    };
  }

  /** Tell Teller what the server answered to the paid retry. */
  async recordOutcome(paymentId: string, args: { status: number; headers: HeadersInit; body?: Uint8Array | string } & CallOptions): Promise<PaymentRecord> {
    const req: payment.RecordOutcomeRequest = { paymentId, status: args.status, headers: toHeaders(args.headers), body: bytes(args.body) };
    return paymentRecord(await this.call<payment.RecordOutcomeRequest, common.PaymentRecord>("recordOutcome", req, args));
  }

  async getPayment(paymentId: string, opts: CallOptions = {}): Promise<PaymentRecord> {
    return paymentRecord(await this.call<common.GetPaymentRequest, common.PaymentRecord>("getPayment", { paymentId }, opts));
  }

  /** The tenant's wallets: their id is the walletId every payment names. */
  async listWallets(opts: CallOptions = {}): Promise<Wallet[]> {
    const r = await this.call<payment.ListWalletsRequest, common.ListWalletsResponse>("listWallets", {}, opts);
    return r.wallets.map(wallet);
  }

  async getSpend(walletId = "", opts: CallOptions = {}): Promise<WindowSpend[]> {
    const r = await this.call<payment.GetSpendRequest, common.SpendStatus>("getSpend", { walletId }, opts);
    return r.windows.map((w) => ({
      scope: w.scope, window: w.window, kind: w.kind, limit: BigInt(w.limit || "0"), spent: BigInt(w.spent || "0"),
      reserved: BigInt(w.reserved || "0"), remaining: BigInt(w.remaining || "0"),
      windowStartMs: Number(w.windowStartMs), windowEndMs: Number(w.windowEndMs),
    }));
  }

  /** The tenant's MPP session channels, newest first; `state` filters (open, closing, closed). */
  async listChannels(args: { state?: string } & PageArgs = {}): Promise<ChannelPage> {
    const req: payment.ListChannelsRequest = { state: args.state ?? "", pageSize: args.pageSize ?? 0, pageToken: args.pageToken ?? "" };
    const r = await this.call<payment.ListChannelsRequest, common.ListChannelsResponse>("listChannels", req, args);
    return { channels: r.channels.map(channel), nextPageToken: r.nextPageToken };
  }

  /** One of the tenant's channels (its Channel.id) and a page of its vouchers, highest total first. */
  async getChannel(id: string, args: PageArgs = {}): Promise<ChannelVouchers> {
    const req: payment.GetChannelVouchersRequest = { id, pageSize: args.pageSize ?? 0, pageToken: args.pageToken ?? "" };
    const r = await this.call<payment.GetChannelVouchersRequest, common.GetChannelVouchersResponse>("getChannelVouchers", req, args);
    if (r.channel === undefined) throw new Internal("GetChannelVouchers answered without the channel", status.INTERNAL);
    return {
      channel: channel(r.channel),
      vouchers: r.vouchers.map((v) => ({ cumulative: BigInt(v.cumulative || "0"), signature: v.signature, createdAtMs: Number(v.createdAtMs) })),
      nextPageToken: r.nextPageToken,
    };
  }

  /**
   * Teller makes the request, pays a 402 within policy, retries once and returns the
   * final response. `timeoutMs` bounds the wait for the head (default payTimeoutMs).
   * Never repeated by the client: a repeat would fetch the URL again.
   */
  async pay(url: string, args: PayArgs): Promise<PaidResponse> {
    const paid = await this.payStream(url, args);
    const chunks: Buffer[] = [];
    for await (const chunk of paid.chunks) chunks.push(chunk);
    return { ...paid.response, body: Buffer.concat(chunks) };
  }

  /**
   * Like pay, but the body is handed on as it arrives (`chunks`): a large body, or a
   * metered MPP session stream whose vouchers Teller pays as it runs (capped by
   * `maxStreamAmount`). `timeoutMs` bounds the wait for the head only.
   */
  async payStream(url: string, args: PayArgs): Promise<PaidStream> {
    const req: payment.PayRequest = {
      url, method: args.method ?? "GET", headers: toHeaders(args.headers), body: bytes(args.body), walletId: args.walletId,
      maxAmount: args.maxAmount === undefined ? "" : String(args.maxAmount), idempotencyKey: args.idempotencyKey ?? "",
      protocols: args.protocols ?? [],
      maxStreamAmount: args.maxStreamAmount === undefined ? "" : String(args.maxStreamAmount),
    };
    const headTimeout = args.timeoutMs ?? this.payTimeoutMs;
    const stream: ClientReadableStream<payment.PayResponse> = this.stub.pay(req, this.metadata);
    const parts = stream[Symbol.asyncIterator]() as AsyncIterator<payment.PayResponse>;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      stream.cancel();
    }, headTimeout);
    let first: IteratorResult<payment.PayResponse>;
    try {
      first = await parts.next();
    } catch (e) {
      throw timedOut ? new DeadlineExceeded(`pay: no answer from Teller within ${headTimeout} ms`, status.DEADLINE_EXCEEDED)
        : fromServiceError(e as ServiceError);
    } finally {
      clearTimeout(timer);
    }
    const head = first.done ? undefined : first.value.part?.$case === "head" ? first.value.part.value : undefined;
    if (head === undefined) {
      stream.cancel();
      throw new Internal("Pay ended without a response head", status.INTERNAL);
    }
    async function* chunks(): AsyncGenerator<Buffer> {
      try {
        for (;;) {
          const next = await parts.next();
          if (next.done) return;
          if (next.value.part?.$case === "bodyChunk") yield next.value.part.value;
        }
      } catch (e) {
        throw fromServiceError(e as ServiceError);
      }
    }
    return {
      response: {
        status: head.status, headers: head.headers.map((h) => [h.name, h.value]), body: Buffer.alloc(0),
        payment: head.payment ? paymentRecord(head.payment) : undefined,
        receipt: head.receiptJson ? (JSON.parse(head.receiptJson) as Record<string, unknown>) : undefined,
        paymentHeader: head.paymentHeader,
      },
      chunks: chunks(),
      cancel: () => stream.cancel(),
    };
  }

  /**
   * Close one of the tenant's MPP session channels cooperatively: Teller stops
   * signing vouchers on it and sends the final voucher to `url` (the session's URL);
   * the server's close pays the payee that total and refunds the rest. With
   * `force` (and no `url`), the wallet asks the escrow itself (requestClose): no more
   * vouchers, and after the grace period Teller's reconciler withdraws the rest. Not
   * repeated by the client; `timeoutMs` defaults to payTimeoutMs.
   */
  async closeChannel(id: string, url: string, opts: CallOptions & { force?: boolean } = {}): Promise<ClosedChannel> {
    const r = await this.call<payment.CloseChannelRequest, payment.CloseChannelResponse>(
      "closeChannel", { id, url, force: opts.force ?? false }, { timeoutMs: opts.timeoutMs ?? this.payTimeoutMs },
      false);
    return {
      id: r.id, cumulative: BigInt(r.cumulative || "0"), status: r.status,
      receipt: r.receiptJson ? (JSON.parse(r.receiptJson) as Record<string, unknown>) : undefined,
      txHash: r.txHash, paymentId: r.paymentId, graceEnd: Number(r.graceEnd || 0),
    };
  }
}

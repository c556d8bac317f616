// Typed errors mirroring Teller's gRPC status codes, as in the Python client:
// every failed call rejects with a TellerError subclass carrying the server's
// stable `reason` and structured `metadata` (a spend-limit denial: limit, remaining).
import { Metadata, ServiceError, status } from "@grpc/grpc-js";
import { BinaryReader } from "@bufbuild/protobuf/wire";

export class TellerError extends Error {
  readonly code: status;
  readonly reason: string;
  readonly metadata: Record<string, string>;

  constructor(message: string, code: status = status.UNKNOWN, reason = "", metadata: Record<string, string> = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.reason = reason;
    this.metadata = metadata;
  }
}

/** A field of the request is malformed; the message names it. */
export class InvalidArgument extends TellerError {}
/** Cannot be done now (reasons: payment_refused, idempotency_key_spent, insufficient_balance, ...). */
export class FailedPrecondition extends TellerError {}
/** No such wallet or payment (another tenant's looks the same). */
export class NotFound extends TellerError {}
/** The idempotency key was used for a different purchase. */
export class AlreadyExists extends TellerError {}
export class Unauthenticated extends TellerError {}
/** An allowlist, a disabled tenant, a frozen wallet, a destination Pay may not fetch. */
export class PermissionDenied extends TellerError {}
/** A spend limit refused the payment (RESOURCE_EXHAUSTED). */
export class LimitExceeded extends TellerError {
  get limit(): bigint | undefined {
    return this.metadata.limit !== undefined ? BigInt(this.metadata.limit) : undefined;
  }
  get remaining(): bigint | undefined {
    return this.metadata.remaining !== undefined ? BigInt(this.metadata.remaining) : undefined;
  }
}
/** Teller, or a chain it needs, cannot be reached now. */
export class Unavailable extends TellerError {}
/** The call's deadline passed before Teller answered. */
export class DeadlineExceeded extends TellerError {}
export class Cancelled extends TellerError {}
/** A bug in Teller: report it. */
export class Internal extends TellerError {}

const BY_CODE = new Map<status, new (m: string, c: status, r: string, md: Record<string, string>) => TellerError>([
  [status.INVALID_ARGUMENT, InvalidArgument],
  [status.FAILED_PRECONDITION, FailedPrecondition],
  [status.NOT_FOUND, NotFound],
  [status.ALREADY_EXISTS, AlreadyExists],
  [status.UNAUTHENTICATED, Unauthenticated],
  [status.PERMISSION_DENIED, PermissionDenied],
  [status.RESOURCE_EXHAUSTED, LimitExceeded],
  [status.UNAVAILABLE, Unavailable],
  [status.DEADLINE_EXCEEDED, DeadlineExceeded],
  [status.CANCELLED, Cancelled],
  [status.INTERNAL, Internal],
]);

export function errorFor(code: status, message: string, reason = "", metadata: Record<string, string> = {}): TellerError {
  const cls = BY_CODE.get(code) ?? TellerError;
  return new cls(message, code, reason, metadata);
}

const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";

/** google.rpc.Status -> the ErrorInfo detail's reason and metadata (the only detail Teller sends). */
function errorInfo(statusBytes: Uint8Array): { reason: string; metadata: Record<string, string> } | undefined {
  const status = new BinaryReader(statusBytes);
  while (status.pos < status.len) {
    const [field, wire] = status.tag();
    if (field !== 3) {
      status.skip(wire);
      continue;
    }
    const any = new BinaryReader(status.bytes());
    let typeUrl = "";
    let value: Uint8Array | undefined;
    while (any.pos < any.len) {
      const [f, w] = any.tag();
      if (f === 1) typeUrl = any.string();
      else if (f === 2) value = any.bytes();
      else any.skip(w);
    }
    if (typeUrl !== ERROR_INFO || value === undefined) continue;
    const info = new BinaryReader(value);
    let reason = "";
    const metadata: Record<string, string> = {};
    while (info.pos < info.len) {
      const [f, w] = info.tag();
      if (f === 1) reason = info.string();
      else if (f === 3) {
        const entry = new BinaryReader(info.bytes());
        let k = "";
        let v = "";
        while (entry.pos < entry.len) {
          const [ef, ew] = entry.tag();
          if (ef === 1) k = entry.string();
          else if (ef === 2) v = entry.string();
          else entry.skip(ew);
        }
        metadata[k] = v;
      } else info.skip(w);
    }
    return { reason, metadata };
  }
  return undefined;
}

/** The one place a grpc-js error becomes a TellerError. */
export function fromServiceError(err: ServiceError | Error): TellerError {
  if (err instanceof TellerError) return err;
  const e = err as Partial<ServiceError>;
  const code = typeof e.code === "number" ? (e.code as status) : status.UNKNOWN;
  let reason = "";
  let metadata: Record<string, string> = {};
  const trailers = e.metadata instanceof Metadata ? e.metadata.get("grpc-status-details-bin") : [];
  for (const raw of trailers) {
    if (typeof raw === "string") continue;
    try {
      const info = errorInfo(new Uint8Array(raw));
      if (info) ({ reason, metadata } = info);
    } catch {
      // A detail we cannot read leaves reason and metadata empty; the status still stands.
    }
  }
  return errorFor(code, e.details ?? err.message, reason, metadata);
}
